"""Kept Avro traces written as Avro by the native core (``native/src/avro_kept.rs``): what
``avro_kept.AvroKeptWriter`` writes, byte for byte, from a kept message's buffered ``SpanBatch``
bytes — without fastavro's decode of the batch into dicts and without a Python step per span or
attribute.

Rust reads the batch and every span's ``SpanDetail`` (with ``AvroKeptWriter``'s strictness: what
it would send the reference way comes back as None here, and the caller asks ``AvroKeptWriter``)
and writes each ``KeptTrace`` span. Privacy stays decided here: Rust asks ``_answer`` about the
distinct inputs its bounded memo has no answer for (at most two rounds per message), and this
answers with ``AvroKeptWriter``'s own rules (``protected_entry``, ``protect_name``,
``scan_text``, ``protect_tracestate``, ``with_threshold``) — the encoded output and the audit
counts. The batch's service, resource and scope are protected by ``AvroKeptWriter._envelope_of``
(memoized by their input).

``tests/unit/test_avro_kept_native.py`` holds it to ``AvroKeptWriter`` and to the reference path:
the same bytes, the same audit counts in the same order, random and hostile details, privacy on
and off.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from operators.tracestate import with_threshold
from pipeline.codecs.avro_kept import (
    _IN_CONTEXT,
    _SAME,
    AVRO_WIRE,
    AvroKeptWriter,
    AvroSpan,
    Fallback,
    decode_entry,
    entry,
    string,
)

try:
    from pipeline import _native as _core
except ImportError:  # built without cargo: AvroKeptWriter alone
    _core = None

AVAILABLE = _core is not None and hasattr(_core, "AvroKeptSpans")
# kinds of question the native writer asks (native/src/avro_kept.rs `Ask`)
_NAME, _TEXT, _TRACESTATE, _ATTRIBUTE, _IN_MAP_CONTEXT, _THRESHOLD = range(6)
_WRITE, _DROP, _ASK_IN_CONTEXT = range(3)  # an attribute answer's fate (`Out`)
_LONG = 1 << 63
# an AvroSpan from its (data, link_trace_ids) pair in C (AvroSpan(...) runs a Python __new__ per span)
_NEW_AVRO_SPAN = partial(tuple.__new__, AvroSpan)


class NativeAvroKeptWriter:
    """``AvroKeptWriter.batches`` for a kept message's raw bytes (one per job, beside its
    ``AvroKeptWriter``, whose protector and envelope memo it uses; its answers belong to that
    protector and start over with another)."""

    def __init__(self, writer: AvroKeptWriter):
        if not AVAILABLE:
            raise RuntimeError("the native core is not built (pipeline._native did not import)")
        self.writer = writer
        self._spans = _core.AvroKeptSpans(writer.memo_size)
        self._protector = writer.protector

    def batches(
        self,
        value: bytes,
        trace_id: bytes,
        sampling_attrs: dict,
        threshold: int | None,
        pii_counts: dict[str, int],
        protector: Any = _SAME,
    ) -> list[dict] | None:
        """``AvroKeptWriter.batches`` of this message; None: it takes the Python path (decode it
        and ask ``AvroKeptWriter``, which sends what it cannot write the reference way).
        ``trace_id`` is the message's own (one trace per ``SpanBatch``)."""
        writer = self.writer
        if protector is not _SAME and protector is not writer.protector:
            writer.use(protector)
        if writer.protector is not self._protector:  # answers are one protector's
            self._protector = writer.protector
            self._spans.clear()
        if threshold is not None and not 0 <= threshold < _LONG:
            return None
        try:
            sampling = [(key, entry(key, v)) for key, v in sampling_attrs.items()]
        except Fallback:
            return None
        result = self._spans.write(
            value, sampling, threshold, writer.protector is not None, self._answer, _NEW_AVRO_SPAN
        )
        if result is None:
            return None
        tid, service, resource, scope, spans, counts = result
        try:
            head, tail, hits = writer._envelope_of(
                {"trace_id": tid, "service": service, "resource": resource, "scope_name": scope}
            )
        except Fallback:
            return None
        ordered = dict(counts)  # the spans' counts in the order first counted, then the envelope's
        for name, n in hits:
            ordered[name] = ordered.get(name, 0) + n
        for name, n in ordered.items():
            pii_counts[name] = pii_counts.get(name, 0) + n
        return [{"trace_id": tid, "spans": spans, AVRO_WIRE: (head, tail)}]

    def _answer(self, questions: list[tuple[int, bytes, Any]]) -> list[Any]:
        """Rust's questions about inputs its memo has no answer for, answered by the rules
        ``AvroKeptWriter`` applies to the same inputs; None for one it would send the reference way."""
        writer = self.writer
        protector = writer.protector
        out: list[Any] = []
        for kind, a, b in questions:
            try:
                if kind == _ATTRIBUTE or kind == _IN_MAP_CONTEXT:
                    context = None
                    if kind == _IN_MAP_CONTEXT:
                        context = dict(decode_entry(raw) for raw in b)
                    key, out_key, data, hits = writer.protected_entry(a, context)
                    if out_key is _IN_CONTEXT:
                        out.append((key, _ASK_IN_CONTEXT, "", b"", ()))
                    elif out_key is None:
                        out.append((key, _DROP, "", b"", hits))
                    else:
                        out.append((key, _WRITE, out_key, data, hits))
                    continue
                text = a.decode()
                local: dict[str, int] = {}
                if kind == _NAME:
                    out.append((string(protector.protect_name(text, local)), tuple(local.items())))
                elif kind == _TEXT:
                    out.append((string(protector.scan_text(text, local)), tuple(local.items())))
                elif kind == _TRACESTATE:
                    out.append((protector.protect_tracestate(text, local).encode(), tuple(local.items())))
                elif kind == _THRESHOLD:
                    out.append((with_threshold(text, b).encode(), ()))
                else:
                    raise ValueError(f"unknown question kind {kind}")
            except (Fallback, UnicodeError):
                out.append(None)
        return out
