"""Kept OTLP traces written as ``otlp_proto`` by the native core (``native/src/kept.rs``): what
``otlp_kept.KeptWriter`` writes, byte for byte, from a kept message's buffered bytes — without
the protobuf parse of the whole request and without a Python step per span.

Rust walks the request, selects the trace's spans per (resource, scope) group and writes each
span whose every text the protector leaves as it is, re-encoded as upb would write it (unknown
fields dropped, a status when absent, ``trace_state`` with the decision's threshold, the
``sampling.*`` suffix appended). Privacy stays decided here: Rust asks ``_answer`` about the
distinct inputs its bounded memo has no answer for (once per round of a call), and this answers
with ``KeptWriter``'s own rules (``_attribute_unchanged``, ``Protector.*_unchanged``,
``with_threshold``). A span some answer (or the dict shape: a ``kvlist``, a dropped count) says
protection changes comes back as its raw bytes and takes ``KeptWriter``'s reference path alone
(``_rebuilt``) — unless only its own attributes change, each into what ``_attribute`` answers
(a tokenized e-mail: every kept root span of the peer benchmark), which Rust writes as
``_rebuilt`` would; one Rust does not read as protobuf would (a singular field given twice, oneof
members replacing each other) goes to ``KeptWriter._span``, which decides and writes it as it
always has — its unchanged spans keep their own field order, the rebuilt ones do not, so the
bytes stay ``KeptWriter``'s. A message with a span no output can carry comes back as None and
takes the whole Python path (which dead-letters it). Resources and scopes are protected the
reference way once per distinct (resource, scope) bytes.

``tests/unit/test_kept_native.py`` holds it to ``KeptWriter`` and to the reference path: the same
bytes, the same audit counts, random and hostile spans, privacy on and off.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from operators.tracestate import with_threshold
from pipeline.codecs.otlp import KINDS, STATUS, _service, fill_attrs, value_to_py
from pipeline.codecs.otlp_kept import (
    _ENVELOPE_MEMO_BYTES,
    _ENVELOPE_MEMO_SIZE,
    _IN_CONTEXT,
    _NESTED,
    _OWN_KEYS,
    _OWN_KEYS_PREFIX,
    _SAME,
    _SCALARS,
    KeptWriter,
    _annotation,
)
from pipeline.codecs.protowire import WIRE, WireSpan

try:
    from pipeline import _native as _core
except ImportError:  # built without cargo: KeptWriter alone
    _core = None

AVAILABLE = _core is not None and hasattr(_core, "KeptSpans")
# kinds of question the native writer asks (native/src/kept.rs `Ask`)
_NAME, _TEXT, _TRACESTATE, _ATTRIBUTE, _IN_MAP_CONTEXT, _THRESHOLD = range(6)
_SUFFIX_MEMO_SIZE = 1024
# a WireSpan from its (field, link_trace_ids) pair in C (WireSpan(...) runs a Python __new__ per span)
_NEW_WIRE_SPAN = partial(tuple.__new__, WireSpan)


class NativeKeptWriter:
    """``KeptWriter.batches`` for a kept message's raw bytes (one per job, beside its
    ``KeptWriter``, whose protector and reference path it uses; its memos belong to that protector
    and start over with another)."""

    def __init__(self, writer: KeptWriter):
        if not AVAILABLE:
            raise RuntimeError("the native core is not built (pipeline._native did not import)")
        self.writer = writer
        self._spans = _core.KeptSpans(writer.memo_size)
        self._protector = writer.protector
        self._envelopes: dict[tuple[bytes, bytes], tuple[bytes, bytes, tuple, str]] = {}
        self._suffixes: dict[tuple, bytes] = {}

    def batches(
        self,
        value: bytes,
        trace_id: bytes,
        sampling_attrs: dict,
        threshold: int | None,
        pii_counts: dict[str, int],
        protector: Any = _SAME,
    ) -> list[dict] | None:
        """``KeptWriter.batches`` of this message's spans of ``trace_id``; None: the message
        takes the Python path (decode it and ask ``KeptWriter``: it reports what no output can
        carry)."""
        writer = self.writer
        if protector is not _SAME and protector is not writer.protector:
            writer.use(protector)
        if writer.protector is not self._protector:  # answers are one protector's
            self._protector = writer.protector
            self._spans.clear()
            self._envelopes.clear()
        suffix = self._suffix(sampling_attrs)
        groups = self._spans.write(
            value,
            trace_id,
            suffix,
            threshold,
            writer.protector is not None,
            self._answer,
            _NEW_WIRE_SPAN,
        )
        if groups is None:
            return None
        out = []
        for rs_head, ss_head, spans in groups:
            rs_out, ss_out, hits, service = self._envelope(trace_id, rs_head, ss_head)
            for i, sp in enumerate(spans):
                if type(sp) is list:  # rebuilt in Rust (attributes replaced): counted in span order
                    spans[i], counts = sp
                    for name, n in counts:
                        pii_counts[name] = pii_counts.get(name, 0) + n
                elif type(sp) is tuple:  # protection (or the dict shape) changes it: the reference path
                    header = span_header(service, Span.FromString(sp[0]))
                    spans[i] = writer._rebuilt(trace_id, header, sampling_attrs, threshold, pii_counts)
                elif type(sp) is bytes:  # not read here as protobuf reads it: KeptWriter decides
                    header = span_header(service, Span.FromString(sp))
                    spans[i] = writer._span(trace_id, header, sampling_attrs, suffix, threshold, pii_counts)
            for name, n in hits:  # after the group's spans, as KeptWriter counts them
                pii_counts[name] = pii_counts.get(name, 0) + n
            out.append({"trace_id": trace_id, "spans": spans, WIRE: (rs_out, ss_out)})
        return out

    def _answer(self, questions: list[tuple[int, Any, Any]]) -> list[Any]:
        """Rust's questions about inputs its memo has no answer for, answered by the rules
        ``KeptWriter`` applies to the same inputs."""
        writer = self.writer
        protector = writer.protector
        out: list[Any] = []
        for kind, a, b in questions:
            if kind == _ATTRIBUTE:
                out.append(self._attribute(KeyValue.FromString(a)))
            elif kind == _IN_MAP_CONTEXT:
                found = [KeyValue.FromString(x) for x in b]
                context = {kv.key: value_to_py(kv.value) for kv in found}
                out.append(bool(writer._attribute_unchanged(KeyValue.FromString(a), context)))
            elif kind == _THRESHOLD:
                out.append(with_threshold(a, b))
            elif kind == _NAME:
                out.append(bool(protector.name_unchanged(a)))
            elif kind == _TEXT:
                out.append(bool(protector.text_unchanged(a)))
            elif kind == _TRACESTATE:
                out.append(bool(protector.tracestate_unchanged(a)))
            else:
                raise ValueError(f"unknown question kind {kind}")
        return out

    def _attribute(self, kv: KeyValue) -> int | tuple[bytes, str | None, tuple]:
        """``KeptWriter._attribute_unchanged(kv, None)`` as Rust reads it — 1 unchanged, 2 in
        context, 0 changed — except that a change Rust can write itself comes as what protection
        makes of the attribute (``native/src/kept.rs`` ``Replacement``): the ``Span.attributes``
        fields ``fill_attrs`` writes of ``Protector.protect_attribute``'s output (none: dropped),
        its key and its audit counts — the same in any map, as the key reads no context. The
        reference path's own (0) for what that cannot stand for: a value the dict shape changes,
        tailsift's own keys (the annotations replace them in place). One protection per attribute
        answers both questions (``attribute_unchanged`` is ``leaves_attribute`` of it)."""
        protector = self.writer.protector
        key = kv.key
        if protector is None or key in _OWN_KEYS or key.startswith(_OWN_KEYS_PREFIX):
            ok = self.writer._attribute_unchanged(kv, None)  # no protection: shapes and own keys only
            return 1 if ok is True else 2 if ok is _IN_CONTEXT else 0
        value = kv.value
        which = value.WhichOneof("value")
        if which not in _SCALARS and (
            which != "array_value" or any(x.WhichOneof("value") in _NESTED for x in value.array_value.values)
        ):
            return 0  # written as a JSON string by the reference path (or, no value, without one)
        if protector.reads_context(key):
            return 2
        py = value_to_py(value)
        out, counts = protector.protect_attribute(key, py, None)
        if protector.leaves_attribute(key, py, out, counts):
            return 1
        safe = next(iter(out), None)
        if safe is not None and (safe in _OWN_KEYS or safe.startswith(_OWN_KEYS_PREFIX)):
            return 0
        scratch = Span()
        fill_attrs(scratch.attributes, out)
        return scratch.SerializeToString(), safe, tuple(counts.items())

    def _envelope(self, trace_id: bytes, rs_head: bytes, ss_head: bytes) -> tuple[bytes, bytes, tuple, str]:
        """A group's protected (resource, scope) heads, audit counts and service, once per
        distinct input bytes (``KeptWriter._envelope_of``'s memo bounds)."""
        key = (rs_head, ss_head)
        hit = self._envelopes.get(key)
        if hit is None:
            rs, ss = ResourceSpans.FromString(rs_head), ScopeSpans.FromString(ss_head)
            service = _service(rs.resource)
            hit = (*self.writer._protected_envelope(trace_id, rs, ss, service), service)
            if len(rs_head) + len(ss_head) <= _ENVELOPE_MEMO_BYTES:
                if len(self._envelopes) >= _ENVELOPE_MEMO_SIZE:
                    self._envelopes.clear()
                self._envelopes[key] = hit
        return hit

    def _suffix(self, sampling_attrs: dict) -> bytes:
        """``_annotation``, once per distinct facts (typed: 1 and 1.0 encode differently)."""
        key = tuple((k, type(v), v) for k, v in sampling_attrs.items())
        suffix = self._suffixes.get(key)
        if suffix is None:
            suffix = _annotation(sampling_attrs)
            if len(self._suffixes) >= _SUFFIX_MEMO_SIZE:
                self._suffixes.clear()
            self._suffixes[key] = suffix
        return suffix


def span_header(service: str, sp: Span) -> dict:
    """The span header ``otlp.decode_traces`` builds for ``sp`` (what ``span_to_dict`` reads)."""
    kind = sp.kind
    code = sp.status.code
    return {
        "service": service,
        "span_id": sp.span_id,
        "parent_span_id": sp.parent_span_id or None,
        "name": sp.name,
        "kind": KINDS[kind] if 0 <= kind < 6 else "UNSPECIFIED",
        "start_time_unix_nano": sp.start_time_unix_nano,
        "end_time_unix_nano": sp.end_time_unix_nano,
        "status_code": STATUS[code] if 0 <= code < 3 else "UNSET",
        "trace_state": sp.trace_state,
        "detail": sp,
    }
