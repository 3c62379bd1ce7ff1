"""Protobuf wire format, the little the kept OTLP path writes by hand: length-delimited fields.

A protobuf message is its fields one after another, in any order, and a repeated field may be
split anywhere: so a request is its ``resource_spans`` fields joined, a span already encoded is
copied in as it is, and attributes appended after a span's last field still belong to it
(``Span.attributes``, in order after the span's own). A scalar field given twice takes the last
value. Sizes come out the same as ``SerializeToString`` of the same message, field order aside,
so parts split by size are the same parts.
"""

from __future__ import annotations

from typing import NamedTuple

# (field number << 3) | 2 (length-delimited), each a one-byte tag
REQUEST_RESOURCE_SPANS = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
RESOURCE_SPANS_SCOPE_SPANS = b"\x12"  # ResourceSpans.scope_spans = 2
SCOPE_SPANS_SPANS = b"\x12"  # ScopeSpans.spans = 2
SPAN_ATTRIBUTES = b"\x4a"  # Span.attributes = 9

WIRE = "otlp.wire"  # a wire batch's key: (ResourceSpans without scope_spans, ScopeSpans without spans)


class WireSpan(NamedTuple):
    """A kept span encoded as the ``ScopeSpans.spans`` field that carries it (``Span`` bytes,
    protected and annotated: ``wire_span``) and what ``follow_links`` reads of it."""

    field: bytes
    link_trace_ids: tuple[bytes, ...] = ()


def wire_span(span: bytes, link_trace_ids: tuple[bytes, ...] = ()) -> WireSpan:
    return WireSpan(field(SCOPE_SPANS_SPANS, span), link_trace_ids)


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (one-byte ``tag``)."""
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else varint(n)) + payload


def is_wire(batch: dict) -> bool:
    return WIRE in batch


def resource_spans_field(batch: dict) -> bytes:
    """A wire batch as one ``ExportTraceServiceRequest.resource_spans`` field."""
    rs_head, ss_head = batch[WIRE]
    spans = b"".join([s.field for s in batch["spans"]])
    return field(REQUEST_RESOURCE_SPANS, rs_head + field(RESOURCE_SPANS_SCOPE_SPANS, ss_head + spans))
