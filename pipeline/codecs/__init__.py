"""Wire formats of tailsift's topics. Only the pipeline encodes and decodes; operators see dicts.

``interface`` is the codec interface the job ingests through (``Fragment``, ``Malformed``,
``Codec``); ``for_format`` picks the implementation of a configured wire format."""

from __future__ import annotations

from typing import Any

from operators.span_times import SpanTimeBounds
from pipeline.codecs.interface import Codec, Malformed, SpanLimits


def for_format(
    fmt: str, time_bounds: SpanTimeBounds | None = None, limits: SpanLimits | None = None, core: str = "python"
) -> Codec:
    """The codec of ``fmt`` (``avro``, ``otlp_proto``, ``otlp_json``); ``core="native"``: its
    ingest decode in the Rust core (``pipeline.codecs.native``), the rest the Python codec's."""
    python: Codec
    if fmt == "avro":
        from pipeline.codecs.avro import AvroCodec

        python = AvroCodec(time_bounds, limits)
    else:
        from pipeline.codecs.otlp import OtlpCodec

        python = OtlpCodec(fmt, time_bounds, limits)
    if core != "native":
        return python
    from pipeline.codecs.native import NativeCodec

    return NativeCodec(fmt, time_bounds or SpanTimeBounds(1, 0), python, limits)  # type: ignore[return-value]


def decode_each(codec: Codec, values: list, now_ns: int) -> list:
    """Per value, its fragments or the ``Malformed`` to dead-letter it with — one call into a
    native codec for the whole batch, else the codec's ``decode`` per message."""
    batch = getattr(codec, "decode_batch", None)
    if batch is not None:
        return batch(values, now_ns)
    out: list = []
    for value in values:
        try:
            if not value:
                raise Malformed("empty_value", "the message value is empty or null (tombstone)")
            out.append(codec.decode(value, now_ns))
        except Malformed as bad:
            out.append(bad)
    return out


def decode_traces_each(codec: Codec, values: list[bytes], trace_ids: list[bytes]) -> list[tuple[list[dict], Any]]:
    """The decision's re-decode: per (message, trace ID) of messages ``decode`` accepted before, the
    trace's span headers and the codec's handle for the kept path — one call into a native codec
    for them all (headers only; handle None: the caller asks ``decode_trace`` for a kept trace's),
    else the codec's ``decode_trace`` per message (its handle rides along)."""
    batch = getattr(codec, "trace_headers", None)
    if batch is not None:
        return [(spans, None) for spans in batch(values, trace_ids)]
    out = []
    for value, trace_id in zip(values, trace_ids):
        fragment = codec.decode_trace(value, trace_id)
        out.append((fragment.spans(), fragment.handle))
    return out
