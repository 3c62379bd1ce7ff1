"""OTLP codecs: ``otlp_proto`` and ``otlp_json`` ExportTraceServiceRequest messages, as the OTel
Collector's kafka exporter writes and its kafka receiver reads them (one request per message).

Lazy like the Avro path: ``decode_traces`` parses with protobuf (upb backend) and builds, per span,
only the header dict decisions and SLIs need (``operators.trace.SpanHeader``). The span's
``detail`` is the protobuf ``Span`` itself (no copy); ``decode_detail`` turns its attributes into
Python values only when a policy asks. A request may hold many traces: the result is split per
trace ID, each ``OtlpTrace`` keeping its (resource, scope, spans) groups so a kept trace is fully
converted (``kept_batches``) into the same dict shape as an Avro ``KeptTrace`` batch — the privacy
protector works on that — and encoded back to OTLP by ``encode_request``.

Value mapping (OTLP AnyValue ↔ Python): string/bool/int/double/bytes as themselves, arrays of
scalars as lists; ``kvlist`` values and nested arrays become a JSON string (the Avro attribute
union has no maps, and the protector scans strings — a map would pass it unscanned).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from operators.span_times import SpanTimeBounds
from pipeline.codecs import protowire
from pipeline.codecs.interface import Fragment, KeptBatches, KeptFacts, Malformed, SpanLimits, safe_text

KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS = ("UNSET", "OK", "ERROR")
_KIND_NUM = {k: i for i, k in enumerate(KINDS)}
_STATUS_NUM = {k: i for i, k in enumerate(STATUS)}
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
FORMATS = ("otlp_proto", "otlp_json")


class InvalidSpan(ValueError):
    """A span the job must not take: ``reason`` is its dead-letter reason. The message never holds
    id bytes or other payload (it goes to the dead-letter topic and to logs)."""

    reason = "invalid_span"


class InvalidTraceId(InvalidSpan):
    reason = "invalid_trace_id"


class InvalidSpanId(InvalidSpan):
    reason = "invalid_span_id"


class InvalidTimestamp(InvalidSpan):
    reason = "invalid_timestamp"


class SpanTooLarge(InvalidSpan):
    reason = "span_too_large"


class TooManyAttributes(InvalidSpan):
    reason = "too_many_attributes"


_MAX_FIXED_AS_LONG = (1 << 63) - 1  # OTLP times are fixed64; Avro (KeptTrace) and our windows use long


class OtlpTrace:
    """The spans of one trace ID from one request: headers for decisions, protobuf groups for output."""

    __slots__ = ("trace_id", "spans", "groups", "request")

    def __init__(self, trace_id: bytes, request: ExportTraceServiceRequest | None = None):
        self.trace_id = trace_id
        self.spans: list[dict] = []  # SpanHeader dicts, detail = the protobuf Span
        self.groups: list[list] = []  # [ResourceSpans, ScopeSpans, service, [SpanHeader]]
        # the request it came in (its groups hold parts of it, which keep it alive anyway): a
        # re-keyed copy of several traces walks it for their spans in message order (split_traces)
        self.request = request


# ------------------------------------------------------------------ parse / serialize requests
def parse_request(value: bytes, fmt: str = "otlp_proto") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    if fmt == "otlp_proto":
        req.ParseFromString(value)
    elif fmt == "otlp_json":
        data = json.loads(value)
        _ids_hex_to_b64(data)
        json_format.ParseDict(data, req, ignore_unknown_fields=True)
    else:
        raise ValueError(f"unknown OTLP format {fmt!r}")
    return req


def serialize_request(req: ExportTraceServiceRequest, fmt: str = "otlp_proto") -> bytes:
    if fmt == "otlp_proto":
        return req.SerializeToString()
    if fmt == "otlp_json":
        # OTLP/JSON: lowerCamelCase keys, enums as integers, trace/span ids as hex (not base64).
        data = json_format.MessageToDict(req, use_integers_for_enums=True)
        _ids_b64_to_hex(data)
        return json.dumps(data, separators=(",", ":")).encode()
    raise ValueError(f"unknown OTLP format {fmt!r}")


_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _walk_spans(data: dict) -> Iterable[dict]:
    for rs in data.get("resourceSpans") or ():
        for ss in rs.get("scopeSpans") or ():
            for sp in ss.get("spans") or ():
                yield sp
                yield from sp.get("links") or ()


def _ids_hex_to_b64(data: dict) -> None:
    for obj in _walk_spans(data):
        for k in _ID_KEYS:
            v = obj.get(k)
            if isinstance(v, str) and v:
                obj[k] = base64.b64encode(bytes.fromhex(v)).decode()


def _ids_b64_to_hex(data: dict) -> None:
    for obj in _walk_spans(data):
        for k in _ID_KEYS:
            v = obj.get(k)
            if isinstance(v, str) and v:
                obj[k] = base64.b64decode(v).hex()


# ------------------------------------------------------------------ hot path: headers per trace
def _service(resource) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name":
            return kv.value.string_value
    return ""


def decode_traces(
    value: bytes,
    fmt: str = "otlp_proto",
    time_bounds: SpanTimeBounds | None = None,
    now_ns: int = 0,
    limits: SpanLimits | None = None,
) -> dict[bytes, OtlpTrace]:
    """Parse a request and split it per trace ID into header dicts. Raises on malformed input;
    ``InvalidSpan`` (its ``reason`` says which) for a trace ID that is not 16 non-zero bytes or a
    span or parent span ID not 8 bytes, and ``InvalidTimestamp`` for span times outside
    ``time_bounds`` at worker time ``now_ns`` (``operators.span_times``; tested inline here, where
    the times are read anyway: a second pass over the header dicts cost 3 µs per message). Links
    and events are checked only when the trace is kept
    (``span_to_dict``: reading them for every span cost 8 µs per message, more than the rest of
    the validation together). A span ID of all zeros is invalid (W3C); with ``limits``, a span over
    ``limits.max_span_bytes`` (its protobuf size) raises ``SpanTooLarge`` and one with more than
    ``limits.max_attributes`` attributes ``TooManyAttributes`` — looked at only in a message large
    enough to hold such a span."""
    req = parse_request(value, fmt)
    check_bytes = limits is not None and limits.may_exceed_bytes(len(value))
    check_attributes = limits is not None and limits.may_exceed_attributes(len(value))
    traces: dict[bytes, OtlpTrace] = {}
    kinds, statuses = KINDS, STATUS
    checked = time_bounds is not None
    if checked:
        latest, skew, limit = time_bounds.latest(now_ns), time_bounds.max_skew_ns, time_bounds.limit_ns
    for rs in req.resource_spans:
        service = _service(rs.resource)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                tid = sp.trace_id
                trace = traces.get(tid)
                if trace is None:
                    if len(tid) != 16 or tid == _ZERO_TRACE_ID:
                        raise InvalidTraceId("a trace ID is not 16 non-zero bytes")
                    trace = traces[tid] = OtlpTrace(tid, req)
                span_id = sp.span_id
                if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
                    raise InvalidSpanId(
                        "a span ID is all zeros" if len(span_id) == 8 else f"a span ID is {len(span_id)} bytes, not 8"
                    )
                if check_attributes and len(sp.attributes) > limits.max_attributes:
                    raise TooManyAttributes(limits.too_many_attributes("a span", len(sp.attributes)).detail)
                if check_bytes and sp.ByteSize() > limits.max_span_bytes:
                    raise SpanTooLarge(limits.too_large("a span", sp.ByteSize()).detail)
                parent = sp.parent_span_id
                if parent and len(parent) != 8:
                    raise InvalidSpanId(f"a parent span ID is {len(parent)} bytes, not 8")
                start = sp.start_time_unix_nano
                end = sp.end_time_unix_nano
                if checked and not (0 < end <= latest and 0 < start <= end + skew and start <= limit):
                    raise InvalidTimestamp(time_bounds.explain("a span", start, end, now_ns))
                kind = sp.kind
                code = sp.status.code
                header = {
                    "service": service,
                    "span_id": span_id,
                    "parent_span_id": parent or None,
                    "name": sp.name,
                    "kind": kinds[kind] if 0 <= kind < 6 else "UNSPECIFIED",
                    "start_time_unix_nano": start,
                    "end_time_unix_nano": end,
                    "status_code": statuses[code] if 0 <= code < 3 else "UNSET",
                    "trace_state": sp.trace_state,
                    "detail": sp,
                }
                trace.spans.append(header)
                groups = trace.groups
                if groups and groups[-1][1] is ss:
                    groups[-1][3].append(header)
                else:
                    groups.append([rs, ss, service, [header]])
    return traces


def key_matches(key: bytes | None, trace_id: bytes) -> bool:
    """Keyed by this trace ID: its 16 bytes (tailsift) or its 32 hex characters (Collector)."""
    return key is not None and (key == trace_id or key == trace_id.hex().encode())


def split_request(trace: OtlpTrace, fmt: str = "otlp_proto") -> bytes:
    """A request holding only this trace's spans, resource and scope kept (for re-keying)."""
    req = ExportTraceServiceRequest()
    for rs, ss, _service_name, headers in trace.groups:
        _add_scope_spans(req, rs, ss, [h["detail"] for h in headers])
    return serialize_request(req, fmt)


def _add_scope_spans(req: ExportTraceServiceRequest, rs: Any, ss: Any, spans: list) -> None:
    """One resource_spans holding one scope_spans with ``spans``: ``rs``'s resource and ``ss``'s
    scope, schema URLs kept — a re-keyed copy's unit."""
    rs2 = req.resource_spans.add()
    rs2.resource.CopyFrom(rs.resource)
    rs2.schema_url = rs.schema_url
    ss2 = rs2.scope_spans.add()
    ss2.scope.CopyFrom(ss.scope)
    ss2.schema_url = ss.schema_url
    ss2.spans.extend(spans)


def split_traces(traces: list[OtlpTrace], fmt: str = "otlp_proto") -> bytes:
    """A request holding only these traces' spans (of one request, ``decode_traces``'s), in message
    order: one resource_spans with one scope_spans per scope_spans occurrence that holds any of them
    (resource, scope and schema URLs kept) — one re-keyed copy for every trace bound for one
    partition. ``split_request`` for a single trace."""
    if len(traces) == 1:
        return split_request(traces[0], fmt)
    ids = {t.trace_id for t in traces}
    req = ExportTraceServiceRequest()
    for rs in traces[0].request.resource_spans:
        for ss in rs.scope_spans:
            spans = [sp for sp in ss.spans if sp.trace_id in ids]
            if spans:
                _add_scope_spans(req, rs, ss, spans)
    return serialize_request(req, fmt)


# ------------------------------------------------------------------ values
def value_to_py(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return v.bool_value
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "bytes_value":
        return v.bytes_value
    if which == "array_value":
        out = []
        for x in v.array_value.values:
            w = x.WhichOneof("value")
            out.append(json.dumps(_jsonable(x)) if w in ("array_value", "kvlist_value") else value_to_py(x))
        return out
    return json.dumps(_jsonable(v))  # kvlist_value


def _jsonable(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_jsonable(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _jsonable(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return value_to_py(v)


def attrs_to_py(kvs) -> dict[str, Any]:
    return {kv.key: value_to_py(kv.value) for kv in kvs}


def py_to_value(value: Any, out: AnyValue) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, (bytes, bytearray)):
        out.bytes_value = bytes(value)
    elif isinstance(value, (list, tuple)):
        arr = out.array_value
        arr.SetInParent()
        for x in value:
            py_to_value(x, arr.values.add())
    elif isinstance(value, dict):
        kvl = out.kvlist_value
        kvl.SetInParent()
        for k, x in value.items():
            kv = kvl.values.add(key=str(k))
            py_to_value(x, kv.value)
    else:
        out.string_value = str(value)


def fill_attrs(target, attrs: dict) -> None:
    for k, v in attrs.items():
        kv = target.add(key=k)
        py_to_value(v, kv.value)


# ------------------------------------------------------------------ lazy attributes, kept traces
def decode_detail(span: Span) -> dict:
    """The injected TraceView decoder: a span's attributes, from its protobuf ``Span``."""
    return {"attributes": attrs_to_py(span.attributes)}


def span_to_dict(header: dict, sp: Span) -> dict:
    """A full span in the KeptTrace dict shape (header fields + status message, attributes,
    events, links); OTLP-only fields ride along under ``otlp.*`` keys Avro ignores. Raises
    ``InvalidSpan`` for a link ID of the wrong length or an event time beyond 2^63 - 1 (neither
    fits the output; checked here, for kept spans only, not at ingest)."""
    span = {k: v for k, v in header.items() if k != "detail"}
    span["status_message"] = sp.status.message
    span["attributes"] = attrs_to_py(sp.attributes)
    span["events"] = [
        {"time_unix_nano": e.time_unix_nano, "name": e.name, "attributes": attrs_to_py(e.attributes)} for e in sp.events
    ]
    check_writable(sp)
    span["links"] = [
        {
            "trace_id": ln.trace_id,
            "span_id": ln.span_id,
            "trace_state": ln.trace_state,
            "attributes": attrs_to_py(ln.attributes),
        }
        for ln in sp.links
    ]
    span["otlp.flags"] = sp.flags
    return span


def check_writable(sp: Span) -> None:
    """Raises ``InvalidSpan`` for what no output format can carry: a link ID of the wrong length,
    an event time beyond 2^63 - 1."""
    if sp.events:
        for e in sp.events:
            if e.time_unix_nano > _MAX_FIXED_AS_LONG:
                raise InvalidTimestamp("an event time is beyond 2^63 - 1 ns")
    if sp.links:
        for ln in sp.links:
            if len(ln.trace_id) != 16 or len(ln.span_id) != 8:
                raise InvalidSpanId(f"a link's trace/span ID is {len(ln.trace_id)}/{len(ln.span_id)} bytes, not 16/8")


def envelope_batch(trace_id: bytes, rs: ResourceSpans, ss: ScopeSpans, service: str) -> dict:
    """A (resource, scope) group as a KeptTrace-shaped batch without its spans."""
    return {
        "trace_id": trace_id,
        "service": service,
        "spans": [],
        "resource": attrs_to_py(rs.resource.attributes),
        "scope_name": ss.scope.name,
        "otlp.scope_version": ss.scope.version,
        "otlp.scope_attributes": attrs_to_py(ss.scope.attributes),
        "otlp.resource_schema_url": rs.schema_url,
        "otlp.scope_schema_url": ss.schema_url,
    }


def kept_batches(trace: OtlpTrace) -> list[dict]:
    """One KeptTrace-shaped batch per (resource, scope) group, fully decoded."""
    out = []
    for rs, ss, service, headers in trace.groups:
        spans = [span_to_dict(h, h["detail"]) for h in headers]
        out.append({**envelope_batch(trace.trace_id, rs, ss, service), "spans": spans})
    return out


def encode_request(batches: list[dict], fmt: str = "otlp_proto") -> bytes:
    """KeptTrace-shaped batches (from OTLP or Avro input, after protection) → an OTLP request.
    ``otlp_proto`` also takes the wire batches of ``pipeline.codecs.otlp_kept`` (spans already
    encoded, ``protowire``): a request is its ``resource_spans`` fields one after another, so each batch is
    encoded on its own and the bytes joined — the same bytes as one ``SerializeToString``."""
    if fmt == "otlp_proto":
        return b"".join(protowire.resource_spans_field(b) if protowire.is_wire(b) else _rs_field(b) for b in batches)
    req = ExportTraceServiceRequest()
    for b in batches:
        _fill_resource_spans(req.resource_spans.add(), b)
    return serialize_request(req, fmt)


def _rs_field(b: dict) -> bytes:
    rs = ResourceSpans()
    _fill_resource_spans(rs, b)
    return protowire.field(protowire.REQUEST_RESOURCE_SPANS, rs.SerializeToString())


def _fill_resource_spans(rs: ResourceSpans, b: dict) -> None:
    ss = fill_envelope(rs, rs.scope_spans.add(), b)
    trace_id = b["trace_id"]
    for s in b["spans"]:
        fill_span(ss.spans.add(), trace_id, s)


def fill_envelope(rs: ResourceSpans, ss: ScopeSpans, b: dict) -> ScopeSpans:
    """A batch's resource (``service.name`` added when the resource lacks it) and scope."""
    rs.schema_url = b.get("otlp.resource_schema_url", "")
    resource = b.get("resource") or {}
    if not isinstance(resource, dict):
        resource = {}
    if b.get("service") and "service.name" not in resource:
        resource = {"service.name": b["service"], **resource}
    fill_attrs(rs.resource.attributes, resource)
    ss.schema_url = b.get("otlp.scope_schema_url", "")
    ss.scope.name = b.get("scope_name", "")
    ss.scope.version = b.get("otlp.scope_version", "")
    fill_attrs(ss.scope.attributes, b.get("otlp.scope_attributes") or {})
    return ss


def fill_span(sp: Span, trace_id: bytes, s: dict) -> None:
    """A KeptTrace-shaped span dict → the protobuf ``Span``."""
    sp.trace_id = trace_id
    sp.span_id = s["span_id"]
    if s.get("parent_span_id"):
        sp.parent_span_id = s["parent_span_id"]
    sp.name = s.get("name", "")
    sp.kind = _KIND_NUM.get(s.get("kind", "UNSPECIFIED"), 0)
    sp.start_time_unix_nano = s["start_time_unix_nano"]
    sp.end_time_unix_nano = s["end_time_unix_nano"]
    sp.trace_state = s.get("trace_state", "")
    sp.flags = s.get("otlp.flags", 0)
    sp.status.code = _STATUS_NUM.get(s.get("status_code", "UNSET"), 0)
    sp.status.message = s.get("status_message", "")
    fill_attrs(sp.attributes, s.get("attributes") or {})
    for e in s.get("events") or ():
        ev = sp.events.add(time_unix_nano=e["time_unix_nano"], name=e["name"])
        fill_attrs(ev.attributes, e.get("attributes") or {})
    for ln in s.get("links") or ():
        lk = sp.links.add(trace_id=ln["trace_id"], span_id=ln["span_id"], trace_state=ln.get("trace_state", ""))
        fill_attrs(lk.attributes, ln.get("attributes") or {})


__all__ = [
    "FORMATS",
    "OtlpCodec",
    "InvalidSpan",
    "InvalidSpanId",
    "InvalidTimestamp",
    "InvalidTraceId",
    "OtlpTrace",
    "decode_traces",
    "decode_detail",
    "kept_batches",
    "encode_request",
    "split_request",
    "split_traces",
    "key_matches",
    "parse_request",
    "serialize_request",
    "Status",
    "KeyValue",
]


def kept_summary(trace_id: bytes, value: bytes, fmt: str = "otlp_proto") -> dict:
    """The KeptTrace header fields (trace_id, policy, adjusted_count, late, span_count) of a kept
    trace emitted as OTLP, read back from its spans' ``sampling.*`` attributes (reports, tests)."""
    req = parse_request(value, fmt)
    spans = [sp for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    attrs = attrs_to_py(spans[0].attributes) if spans else {}
    return {
        "trace_id": trace_id,
        "policy": attrs.get("sampling.policy", ""),
        "adjusted_count": float(attrs.get("sampling.adjusted_count", 1.0)),
        "late": bool(attrs.get("sampling.late", False)),
        "span_count": len(spans),
    }


# ------------------------------------------------------------------ the ingest codec (spans.raw)
class OtlpCodec:
    """``pipeline.codecs.interface.Codec`` for ``otlp_proto`` / ``otlp_json`` requests: a request
    may hold many traces, so it yields one ``Fragment`` per trace ID (in first-seen order), each
    with its (service, headers) groups and, as handle, the ``OtlpTrace`` with the protobuf groups
    that re-keying (``split``) and kept traces (``kept_batches``) are built from."""

    def __init__(
        self, fmt: str = "otlp_proto", time_bounds: SpanTimeBounds | None = None, limits: SpanLimits | None = None
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown OTLP format {fmt!r}")
        self.name = fmt
        self.time_bounds = time_bounds
        self.limits = limits

    def decode(self, value: bytes, now_ns: int) -> list[Fragment]:
        fmt = self.name
        try:
            traces = decode_traces(value, fmt, self.time_bounds, now_ns, self.limits)
        except InvalidSpan as exc:  # its text holds lengths and bounds, never id bytes
            raise Malformed(exc.reason, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - protobuf/json raise many types for bad bytes
            raise Malformed(
                "decode_error",
                f"not an OTLP ExportTraceServiceRequest ({fmt}): {type(exc).__name__}: {safe_text(exc)}",
            ) from None
        if not traces:
            raise Malformed("empty_batch", "the request has no spans")
        return [_fragment(trace) for trace in traces.values()]

    def decode_trace(self, value: bytes, trace_id: bytes) -> Fragment:
        return _fragment(decode_traces(value, self.name)[trace_id])

    def split(self, value: bytes, fragments: list[Fragment]) -> bytes:
        return split_traces([f.handle for f in fragments], self.name)

    def decode_detail(self, detail: Span) -> dict:
        return decode_detail(detail)

    def kept_batches(self, value: bytes, handle: Any) -> KeptBatches:
        try:
            return KeptBatches(kept_batches(handle))
        except InvalidSpan as exc:  # a link ID or event time no output format can carry
            raise Malformed(exc.reason, str(exc)) from None

    def encode_kept(self, facts: KeptFacts, batches: list[dict], part: int = 0, parts: int = 1) -> bytes:
        # OTLP has no record-level facts: each span carries them as sampling.* attributes
        return encode_request(batches, self.name)


def _fragment(trace: OtlpTrace) -> Fragment:
    return Fragment(trace.trace_id, [(g[2], g[3]) for g in trace.groups], len(trace.spans), trace)
