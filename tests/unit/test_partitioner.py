"""One partitioner for the system: the canonical partition of a trace, and the job re-keying a
message that is keyed right but sits on another partition."""

import os

from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from pipeline import config
from pipeline.codecs import avro
from pipeline.job import Job, Received
from pipeline.kafka.partitioner import canonical_partition, murmur2_16
from tests.spans import batch_bytes, span


@given(st.binary(min_size=16, max_size=16))
def test_murmur2_16_equals_the_java_clients_murmur2(key):
    assert murmur2_16(key) == murmur2(key)


def test_known_java_partition():
    # Java: Utils.toPositive(Utils.murmur2(bytes 0..15)) % 12 — as computed by aiokafka's reference
    key = bytes(range(16))
    assert canonical_partition(key, 12) == (murmur2(key) & 0x7FFFFFFF) % 12


def make_job():
    job = Job(config.parse({"privacy": {"enabled": False}}), worker_id="t")
    job.input_partitions = 12
    return job


def test_a_message_keyed_by_its_trace_but_off_its_canonical_partition_is_rekeyed():
    """Before: only the key was checked, so a producer that keyed by trace ID with another hash
    (librdkafka's default CRC32, the project's own KafkaSpanExporter) had its traces split across
    workers — ~91 % of traces arriving both keyed and re-keyed on 12 partitions."""
    job = make_job()
    tid = os.urandom(16)
    home = canonical_partition(tid, 12)
    value = batch_bytes(tid, "svc", [span(1, parent=None)])
    now = 10**12  # after the span's end: the job refuses spans from its future
    job.ingest([Received((home + 1) % 12, 0, tid, value, 0), Received(home, 0, tid, value, 0)], now_ns=now)
    out = job.collect(now)
    rekeyed = [r for r in out.records if r.topic == "spans.raw"]
    assert [(r.key, r.partition) for r in rekeyed] == [(tid, None)]  # by key: murmur2 → home
    assert job.assembler.buffered_spans == 1  # the one on its home partition is buffered
    assert avro.decode_batch(rekeyed[0].value)["trace_id"] == tid
