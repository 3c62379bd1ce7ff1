"""One partitioner for the system: the canonical partition of a trace, and the job re-keying a
message that is keyed right but sits on another partition."""

import os

from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from pipeline import config
from pipeline.codecs import avro
from pipeline.job import Job, Received
from pipeline.kafka.partitioner import COLLECTOR, TAILSIFT, canonical_partition, murmur2_16, sarama_partition
from tests.spans import batch_bytes, span


@given(st.binary(min_size=16, max_size=16))
def test_murmur2_16_equals_the_java_clients_murmur2(key):
    assert murmur2_16(key) == murmur2(key)


def test_known_java_partition():
    # Java: Utils.toPositive(Utils.murmur2(bytes 0..15)) % 12 — as computed by aiokafka's reference
    key = bytes(range(16))
    assert canonical_partition(key, 12) == (murmur2(key) & 0x7FFFFFFF) % 12


# Partitions Go computed with the Collector v0.160.0 kafka exporter's hasher (internal/kafka
# franz_client.go: kgo.SaramaCompatHasher over hash/fnv New32a) for these hex keys and 12, 7 and
# 1,000 partitions; the first key's FNV-1a is below 2^31, the others fold their sign.
GO_SARAMA = [
    ("a3c1e2f4b5d6978812345678abcdef01", 3, 5, 399),
    ("7d3f8a2b9c4e5f6071829304a5b6c7d8", 0, 1, 948),
    ("1111111111111111aaaaaaaaaaaaaaaa", 11, 1, 547),
    ("0af7651916cd43dd8448eb211c80319c", 7, 5, 99),
    ("4bf92f3577b34da6a3ce929d0e0e4736", 6, 5, 310),
    ("00000000000000000000000000000001", 6, 6, 206),
    ("ffffffffffffffffffffffffffffffff", 3, 4, 475),
    ("5b8efff798038103d269b633813fc60c", 5, 1, 625),
]


def test_sarama_partition_equals_the_collectors_go_hasher():
    for hex_key, p12, p7, p1000 in GO_SARAMA:
        key = hex_key.encode()
        assert [sarama_partition(key, n) for n in (12, 7, 1000)] == [p12, p7, p1000], hex_key
        trace_id = bytes.fromhex(hex_key)
        assert COLLECTOR.key(trace_id) == key and COLLECTOR.partition(trace_id, 12) == p12


def test_the_default_partitioning_is_raw_bytes_and_murmur2():
    trace_id = bytes(range(16))
    assert TAILSIFT.key(trace_id) == trace_id
    assert TAILSIFT.partition(trace_id, 12) == canonical_partition(trace_id, 12)


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
    assert [(r.key, r.partition) for r in rekeyed] == [(tid, home)]  # murmur2 → home
    assert job.assembler.buffered_spans == 1  # the one on its home partition is buffered
    assert avro.decode_batch(rekeyed[0].value)["trace_id"] == tid


def test_collector_partitioning_takes_the_collectors_placement_and_rekeys_to_it():
    """``ingest.partitioning: collector``: a message as the Collector's kafka exporter writes it
    (hex key, Sarama FNV-1a partition) is buffered where it is — under the default partitioning the
    same message is re-keyed (before this key existed, every Collector message was copied once);
    a message placed the tailsift way is re-keyed to the hex key and the Collector's partition."""
    tid = bytes.fromhex(GO_SARAMA[0][0])
    hex_key, collector_home = tid.hex().encode(), GO_SARAMA[0][1]
    murmur_home = canonical_partition(tid, 12)
    assert collector_home != murmur_home
    value = batch_bytes(tid, "svc", [span(1, parent=None)])
    now = 10**12

    default = make_job()
    default.ingest([Received(collector_home, 0, hex_key, value, 0)], now_ns=now)
    assert [(r.key, r.partition) for r in default.collect(now).records if r.topic == "spans.raw"] == [
        (tid, murmur_home)
    ]

    job = Job(config.parse({"privacy": {"enabled": False}, "ingest": {"partitioning": "collector"}}), worker_id="t")
    job.input_partitions = 12
    job.ingest(
        [Received(collector_home, 0, hex_key, value, 0), Received(murmur_home, 0, tid, value, 0)],
        now_ns=now,
    )
    rekeyed = [r for r in job.collect(now).records if r.topic == "spans.raw"]
    assert [(r.key, r.partition) for r in rekeyed] == [(hex_key, collector_home)]
    assert job.assembler.buffered_spans == 1  # the Collector-placed message
