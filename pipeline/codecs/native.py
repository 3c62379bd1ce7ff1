"""The native ingest core (``native/``, Rust, extension module ``pipeline._native``) as a job codec.

One call per consumed batch (``decode_batch``): the Rust readers walk each message once, check
it exactly as the Python decoders do (``pipeline/codecs/otlp.py`` ``decode_traces``,
``avro.decode_batch`` + ``operators/span_times.py``: same reasons, same detail texts) and build
only the span header dicts; attributes, events and links are checked but never materialized.
A header's ``detail`` is bytes: the encoded ``SpanDetail`` (Avro, as fastavro gives it) or the
encoded protobuf ``Span`` (OTLP; ``decode_detail`` parses it when a policy reads attributes —
the Python codec gives the parsed ``Span`` object there). ``Fragment.handle`` is None. The decision
reads a buffered trace's headers again from its raw values in Rust as well (``trace_headers``, one
call per ``collect``); only a kept trace (or a late kept fragment) is decoded by the Python codec,
whose handle the kept path builds its output from.

``AVAILABLE`` is False when the extension was not built (no Rust toolchain at install time):
the job then runs its Python decoders (README "Design").
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from operators.span_times import SpanTimeBounds
from pipeline.codecs import otlp
from pipeline.codecs.interface import Codec, Fragment, Malformed, Rekeyed, SpanLimits

try:
    from pipeline import _native as _core
except ImportError:  # built without cargo: the Python core only
    _core = None

AVAILABLE = _core is not None
FORMATS = ("avro", "otlp_proto")  # otlp_json stays on the Python codec


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """A Rust call allocates a dict per span, and Python's cycle collector would run every 700 of
    them (about a fifth of the CPU samples of a decode under perf) to find cycles these fresh,
    acyclic objects cannot form: paused for the call, it runs once afterwards if due."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


class NativeCodec:
    """``decode``/``decode_batch`` of ``fmt`` (avro or otlp_proto) messages, checked against
    ``time_bounds`` at worker time ``now_ns`` and the per-span ``limits`` (``ingest.max_span_bytes``,
    ``max_attributes_per_span``: checked in Rust while the readers walk each span, with the Python
    codecs' gates, reasons and texts); ``trace_headers`` is the decision's re-decode of buffered
    messages, one call per ``collect``. Everything else of the ``Codec`` interface (re-keying, kept
    traces) is the Python codec's, which this wraps: those run per kept or re-keyed trace, not per
    span."""

    def __init__(
        self, fmt: str, time_bounds: SpanTimeBounds, python: Codec | None = None, limits: SpanLimits | None = None
    ):
        if _core is None:
            raise RuntimeError("the native core is not built (pipeline._native did not import)")
        if fmt not in FORMATS:
            raise ValueError(f"the native core decodes {FORMATS}, not {fmt!r}")
        self.format = self.name = fmt
        self._decode = _core.decode_avro if fmt == "avro" else _core.decode_otlp
        self._limit_ns = time_bounds.limit_ns
        self._max_skew_ns = time_bounds.max_skew_ns
        self.python = python
        self.limits = limits or SpanLimits()
        self._limits = (self.limits.max_span_bytes, self.limits.max_attributes)
        # decode_placed places every message in Rust as well (the key check and murmur2 of the trace
        # ID: ~1 µs per message in Python); OTLP splits a multi-trace request there, Avro is its own copy
        self.places = True
        self._split_value: bytes | None = None  # the message split last, and its traces
        self._split_traces: dict = {}

    def __getattr__(self, name: str) -> Any:  # split, decode_trace, kept_batches, encode_kept
        python = self.__dict__.get("python")
        if python is None:
            raise AttributeError(name)
        return getattr(python, name)

    def decode_batch(self, values: list[bytes | None], now_ns: int) -> list[list[Fragment] | Malformed]:
        """Per value, its fragments or the ``Malformed`` verdict to dead-letter it with. One call
        into Rust for the whole batch."""
        with _no_cycle_collection():
            results = self._decode(values, now_ns, self._limit_ns, self._max_skew_ns, self._limits)
        out: list[list[Fragment] | Malformed] = []
        for result in results:
            if isinstance(result, tuple):
                out.append(Malformed(result[0], result[1]))
            else:
                out.append([Fragment(t, groups, n, None) for t, groups, n in result])
        return out

    def decode_placed(
        self,
        messages: list,
        now_ns: int,
        placement: Any,
        partitions: int,
        max_record_bytes: int,
        max_copies_bytes: int,
    ) -> list[list[Fragment] | Malformed | Rekeyed]:
        """``decode_batch`` and ``pipeline.job.rekey.place`` in one call into Rust: per received
        message its verdict, its fragments when it stays where it arrived, or its re-keyed copies
        (``Rekeyed``: OTLP split from the request's own bytes, one per destination partition — key
        None for a copy of several traces —, an Avro message as it is; placed by
        ``placement`` — a ``pipeline.kafka.partitioner.Partitioning`` — over ``partitions``, 0
        when unknown; too large to re-key when a copy exceeds ``max_record_bytes`` or all of them
        ``max_copies_bytes``, as ``pipeline.job.rekey.place`` says). Header dicts are
        built only for the messages that stay."""

        values = [m.value for m in messages]
        keys = [m.key for m in messages]
        where = [m.partition for m in messages]
        checks = (now_ns, self._limit_ns, self._max_skew_ns, self._limits)
        with _no_cycle_collection():
            if self.format == "avro":  # one trace per message: no copy is larger than the message
                results = _core.ingest_avro(values, keys, where, *checks, placement.name, partitions, max_record_bytes)
            else:
                results = _core.ingest_otlp(
                    values, keys, where, *checks, placement.name, partitions, max_record_bytes, max_copies_bytes
                )
        out: list[list[Fragment] | Malformed | Rekeyed] = []
        for result in results:
            if type(result) is list:
                out.append([Fragment(t, groups, n, None) for t, groups, n in result])
            elif type(result[0]) is str:
                out.append(Malformed(result[0], result[1]))
            elif result[0] is None:  # too large to re-key: its fragments, to buffer where it arrived
                out.append(Rekeyed(None, [Fragment(t, groups, n, None) for t, groups, n in result[1]]))
            else:
                out.append(Rekeyed(result[0]))
        return out

    def counts(self, windows: Any) -> bool:
        """Whether ``ingest_counted`` serves this codec with these SLI windows: the native windows
        (``pipeline.job.sli``) the Rust decode counts every span in, for either format."""
        return isinstance(windows, _core.SliWindows)

    def ingest_counted(
        self,
        batch: Any,
        now_ns: int,
        windows: Any,
        holds: list,
        rekey: bool,
        placement: Any,
        partitions: int,
        max_record_bytes: int,
        max_copies_bytes: int,
    ) -> tuple[list, list[int]]:
        """``decode_placed`` without a header dict per span (``native/src/ingest.rs``,
        ``native/src/avro_ingest.rs``): one call into
        Rust decodes, checks and — with ``rekey`` — places every message of ``batch`` (a
        ``pipeline.job.records.Consumed``) and counts the spans of those that stay in ``windows``
        under their ``holds`` entry (None: counted nowhere). Per message its verdict ``(reason,
        detail)``, a list of ``(trace_id, span_count, has_root, newest_end)`` when it stays,
        ``(copies, None)`` when re-keyed or ``(None, [...])`` when too large to re-key; and per
        message how many windows now hold its hold."""
        checks = (now_ns, self._limit_ns, self._max_skew_ns, self._limits)
        args = (
            batch.values, batch.keys, batch.partitions, holds, windows, *checks,
            rekey, placement.name, partitions, max_record_bytes,
        )  # fmt: skip
        if self.format == "avro":  # one trace per message: its copy is the message itself
            return _core.ingest_avro_counted(*args)
        return _core.ingest_otlp_counted(*args, max_copies_bytes)

    def trace_headers(self, values: list[bytes], trace_ids: list[bytes]) -> list[list[dict]]:
        """Per (message, trace ID) — messages ``decode_batch`` accepted before — that trace's span
        headers in message order, as ``decode_batch`` gave them (``Codec.decode_trace``'s headers,
        without its handle: only a kept trace needs one). One call into Rust for them all; a
        message the Rust reader cannot read again (never expected) is decoded by the Python codec."""
        with _no_cycle_collection():
            if self.format == "avro":
                results = _core.trace_headers_avro(values)
            else:
                results = _core.trace_headers_otlp(values, trace_ids)
        for i, spans in enumerate(results):
            if spans is None:
                results[i] = self.python.decode_trace(values[i], trace_ids[i]).spans()
        return results

    def trace_facts(
        self, values: list[bytes], trace_ids: list[bytes], counts: list[int]
    ) -> tuple[list[Any], list[tuple[str, str, int, int, int]]]:
        """The decision's re-read of due traces without a header dict per span: ``values`` their
        buffered messages trace after trace (``counts[i]`` of trace ``trace_ids[i]``). Per trace a
        ``pipeline._native.TraceFacts`` (``operators.trace.TraceFacts``: span count, any error,
        earliest start, latest end, tracestate; ``spans()`` builds the header dicts of
        ``trace_headers`` on demand) or None where Rust cannot read it again (never expected: ask
        ``trace_headers``); and the service graph's requests of those traces, per raw (client,
        server) pair, for ``ServiceGraph.add_pairs``. One call into Rust for them all."""
        with _no_cycle_collection():
            return _core.trace_facts(self.format == "avro", values, trace_ids, counts)

    def split(self, value: bytes, fragments: list[Fragment]) -> bytes:
        """Re-keying: a message holding only these fragments' traces, split by the Python codec from
        its own parse (a native fragment has no handle). The job splits every copy of a message in
        a row: the message is parsed once for all of them (``decode_trace`` per fragment parsed a
        200-span request once per trace in it)."""
        if self.format == "avro":
            return value  # one trace per message
        if self._split_value is not value:
            self._split_value = value
            self._split_traces = otlp.decode_traces(value, self.format)  # accepted before: not checked again
        return otlp.split_traces([self._split_traces[f.trace_id] for f in fragments], self.format)

    def decode(self, value: bytes, now_ns: int) -> list[Fragment]:
        """The single-message ``Codec`` interface; raises ``Malformed``."""
        result = self.decode_batch([value], now_ns)[0]
        if isinstance(result, Malformed):
            raise result
        return result

    def decode_detail(self, detail: Any) -> dict:
        """A span's attributes from its header's ``detail``: bytes in a native header (the encoded
        SpanDetail or protobuf Span), the Python codec's own object in a header it decoded (the
        decision re-decodes a buffered trace with it)."""
        if self.format == "avro" or not isinstance(detail, bytes | bytearray):
            if self.python is not None:
                return self.python.decode_detail(detail)
            from pipeline.codecs import avro

            return avro.decode_detail(detail)
        return otlp.decode_detail(otlp.Span.FromString(detail))
