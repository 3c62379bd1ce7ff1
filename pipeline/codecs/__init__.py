"""Wire formats of tailsift's topics. Only the pipeline encodes and decodes; operators see dicts.

``interface`` is the codec interface the job ingests through (``Fragment``, ``Malformed``,
``Codec``); ``for_format`` picks the implementation of a configured wire format."""

from __future__ import annotations

from operators.span_times import SpanTimeBounds
from pipeline.codecs.interface import Codec, SpanLimits


def for_format(fmt: str, time_bounds: SpanTimeBounds | None = None, limits: SpanLimits | None = None) -> Codec:
    """The codec of ``fmt`` (``avro``, ``otlp_proto``, ``otlp_json``)."""
    if fmt == "avro":
        from pipeline.codecs.avro import AvroCodec

        return AvroCodec(time_bounds, limits)
    from pipeline.codecs.otlp import OtlpCodec

    return OtlpCodec(fmt, time_bounds, limits)
