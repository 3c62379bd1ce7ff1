"""Memory per buffered span beyond its raw bytes, for both input formats: the buffers hold each
message's raw bytes and counts only; span headers are decoded again at the decision.

Before: OTLP input kept its parsed protobuf and header dicts — ~900 B per buffered span beyond the
raw bytes (Avro input already buffered raw bytes: ~90 B). Measured with tracemalloc (allocation
sizes, not timing: the figure does not depend on machine speed)."""

import pytest

from pipeline.bench import memory_per_buffered_span


@pytest.mark.parametrize("fmt", ["avro", "otlp_proto"])
def test_memory_per_buffered_span_stays_under_300_bytes(fmt):
    per_span, raw_per_span, spans = memory_per_buffered_span(traces=400, fmt=fmt)
    assert spans > 3_000 and raw_per_span > 300
    assert per_span <= 300, f"{fmt}: {per_span:.0f} B per buffered span beyond its raw bytes"
