"""The native ingest core (``native/``, Rust, extension module ``pipeline._native``) as a job codec.

One call per consumed batch (``decode_batch``): the Rust readers walk each message once, check
it exactly as the Python decoders do (``pipeline/codecs/otlp.py`` ``decode_traces``,
``avro.decode_batch`` + ``operators/span_times.py``: same reasons, same detail texts) and build
only the span header dicts; attributes, events and links are checked but never materialized.
A header's ``detail`` is bytes: the encoded ``SpanDetail`` (Avro, as fastavro gives it) or the
encoded protobuf ``Span`` (OTLP; ``decode_detail`` parses it when a policy reads attributes —
the Python codec gives the parsed ``Span`` object there). ``Fragment.handle`` is None: a kept
trace is re-decoded from its raw value with the Python codec, as the job does for buffered traces.

``AVAILABLE`` is False when the extension was not built (no Rust toolchain at install time):
the job then runs its Python decoders (README "Design").
"""

from __future__ import annotations

import gc
from typing import Any

from operators.span_times import SpanTimeBounds
from pipeline.codecs.interface import Codec, Fragment, Malformed, SpanLimits

try:
    from pipeline import _native as _core
except ImportError:  # built without cargo: the Python core only
    _core = None

AVAILABLE = _core is not None
FORMATS = ("avro", "otlp_proto")  # otlp_json stays on the Python codec


class NativeCodec:
    """``decode``/``decode_batch`` of ``fmt`` (avro or otlp_proto) messages, checked against
    ``time_bounds`` at worker time ``now_ns``. Everything else of the ``Codec`` interface (re-keying,
    the decision's re-decode, kept traces) is the Python codec's, which this wraps: those run per
    kept or re-keyed trace, not per span. Per-span limits (``ingest.max_span_bytes``,
    ``max_attributes_per_span``) are the Python codec's too: a message large enough to break one
    (``SpanLimits.may_exceed_*``, by its length) is decoded by it, so verdicts stay identical."""

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
        # messages up to this length cannot break a per-span limit: the native path takes them
        self._native_max_len = min(
            self.limits.max_span_bytes, SpanLimits.MIN_ATTRIBUTE_BYTES * self.limits.max_attributes
        )

    def __getattr__(self, name: str) -> Any:  # split, decode_trace, kept_batches, encode_kept
        python = self.__dict__.get("python")
        if python is None:
            raise AttributeError(name)
        return getattr(python, name)

    def decode_batch(self, values: list[bytes | None], now_ns: int) -> list[list[Fragment] | Malformed]:
        """Per value, its fragments or the ``Malformed`` verdict to dead-letter it with. One call
        into Rust for the whole batch."""
        out: list[list[Fragment] | Malformed] = []
        # The call allocates a dict per span, and Python's cycle collector would run every 700
        # of them (about a fifth of the CPU samples of a decode under perf) to find cycles these fresh, acyclic
        # objects cannot form: paused for the call, it runs once afterwards if due.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        python, longest = self.python, self._native_max_len
        # a message long enough to break a per-span limit goes to the Python codec below: the native
        # reader gets None in its place (an instant empty_value, overridden) instead of decoding it twice
        native_values = values if python is None else [v if not v or len(v) <= longest else None for v in values]
        try:
            results = self._decode(native_values, now_ns, self._limit_ns, self._max_skew_ns)
        finally:
            if paused:
                gc.enable()
        for value, result in zip(values, results):
            if python is not None and value and len(value) > longest:
                try:  # may hold a span past a limit: the reference decoder checks it
                    out.append(python.decode(value, now_ns))
                except Malformed as bad:
                    out.append(bad)
                continue
            if isinstance(result, tuple):
                out.append(Malformed(result[0], result[1]))
            else:
                out.append([Fragment(t, groups, n, None) for t, groups, n in result])
        return out

    def split(self, value: bytes, fragment: Fragment) -> bytes:
        """Re-keying: the Python codec splits from its own handle (a native fragment has none)."""
        if fragment.handle is None and self.python is not None:
            fragment = self.python.decode_trace(value, fragment.trace_id)
        return self.python.split(value, fragment)

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
        from pipeline.codecs import otlp

        return otlp.decode_detail(otlp.Span.FromString(detail))
