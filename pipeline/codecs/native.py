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
from dataclasses import dataclass
from typing import Any

from operators.span_times import SpanTimeBounds

try:
    from pipeline import _native as _core
except ImportError:  # built without cargo: the Python core only
    _core = None

AVAILABLE = _core is not None
FORMATS = ("avro", "otlp_proto")  # otlp_json stays on the Python codec

try:  # the job's codec boundary, when it is there
    from pipeline.codecs.boundary import Fragment, Malformed  # type: ignore[import-not-found]
except ImportError:

    class Malformed(Exception):  # type: ignore[no-redef]
        """A message the job dead-letters: ``reason`` is the dead-letter reason."""

        def __init__(self, reason: str, detail: str):
            super().__init__(reason)
            self.reason = reason
            self.detail = detail

    @dataclass(slots=True)
    class Fragment:  # type: ignore[no-redef]
        """One trace's spans from one message."""

        trace_id: bytes
        groups: list[tuple[str, list[dict]]]  # (service, span header dicts) in message order
        span_count: int
        handle: Any = None


class NativeCodec:
    """``decode``/``decode_batch`` of ``fmt`` (avro or otlp_proto) messages, checked against
    ``time_bounds`` at worker time ``now_ns``."""

    def __init__(self, fmt: str, time_bounds: SpanTimeBounds):
        if _core is None:
            raise RuntimeError("the native core is not built (pipeline._native did not import)")
        if fmt not in FORMATS:
            raise ValueError(f"the native core decodes {FORMATS}, not {fmt!r}")
        self.format = fmt
        self._decode = _core.decode_avro if fmt == "avro" else _core.decode_otlp
        self._limit_ns = time_bounds.limit_ns
        self._max_skew_ns = time_bounds.max_skew_ns

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
        try:
            results = self._decode(values, now_ns, self._limit_ns, self._max_skew_ns)
        finally:
            if paused:
                gc.enable()
        for result in results:
            if isinstance(result, tuple):
                out.append(Malformed(result[0], result[1]))
            else:
                out.append([Fragment(t, groups, n, None) for t, groups, n in result])
        return out

    def decode(self, value: bytes, now_ns: int) -> list[Fragment]:
        """The single-message ``Codec`` interface; raises ``Malformed``."""
        result = self.decode_batch([value], now_ns)[0]
        if isinstance(result, Malformed):
            raise result
        return result

    def decode_detail(self, detail: bytes) -> dict:
        """A span's attributes from its header's ``detail`` bytes (policies that read them)."""
        if self.format == "avro":
            from pipeline.codecs import avro

            return avro.decode_detail(detail)
        from pipeline.codecs import otlp

        return otlp.decode_detail(otlp.Span.FromString(detail))
