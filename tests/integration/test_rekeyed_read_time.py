"""An error trace whose error span comes as a *re-keyed copy* from another partition that is read
behind is kept whole (issue 13: the crash storm's remaining misses — error traces decided before the
copies of their error spans, re-keyed from a killed worker's backlog, arrived).

Two input partitions, one worker. The trace's canonical partition is 0, where its first span is the
only message: partition 0 is read to the end at once. Once the worker has read it, its error span is
produced — 10 ms after the first in Kafka time, well inside the decision wait — on partition 1
(keyed by the trace, so mis-partitioned: the worker re-keys it to partition 0) behind 300 messages
of other traffic, read one message per ``consume``. So when the trace is due, by the worker clock
and by partition 0's own read progress, the copy of its error span is not even written yet.

The messages are stamped (CreateTime) 5 s ahead of the test's clock, a producer clock within
``ingest.max_clock_skew_ms``: until partition 1's backlog is produced, partition 1 is empty and read
to the end, and vouches for everything stamped up to its owner's clock less a second — without the
lead, a slow test machine taking a second between the first span and the backlog would let the
trace go before there is anything to wait for. The test waits on conditions only.

The config keeps the default ``assemble.group_read_time: auto``: only partitions that re-key are
waited for. Partition 1 re-keys once first — one misplaced message of another trace, its copy
committed with a checkpoint that says so — as any partition of a re-keying input has. The worker
that re-keyed it waits for partition 1 from then on at once (``GroupReadTimes.update``'s
``rekeying``); before, only once a snapshot of the committed checkpoints (every 250 ms) had read
that commit, and a 50 ms decision wait could fall before it (CI failed so once: the test ran
``true`` since, every partition waited for)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.codecs import avro
from pipeline.config import TopicsConfig
from pipeline.demo import run_config
from pipeline.jobproc import JobProcess
from pipeline.kafka.checkpoint import Checkpoint
from pipeline.readback import read_all
from pipeline.topics import create_topics
from tests.integration.outputs import kept_records, record_span_ids, wait_committed
from tests.integration.test_assembly_e2e import wait_for
from tests.integration.test_backlog_decisions import trace_on
from tests.spans import batch_bytes
from tests.spans import span as _span

pytestmark = pytest.mark.integration

FILLER = 300  # other traffic on partition 1 before the misplaced error span
WAIT_MS = 50
LEAD_MS = 5_000  # the producer clock's lead


def test_error_span_rekeyed_from_a_partition_read_behind_is_kept_with_its_trace(kafka_bootstrap, unique_name, tmp_path):
    """Before (each partition's own read progress): partition 0 was read to the end, so the trace
    was decided ``decision_wait`` after its first span — dropped (``not_sampled``), before the copy
    of its error span was re-keyed from partition 1 — and the copy followed that decision as a late
    span: no KeptTrace, the decision log said drop."""
    path, cfg = make_env(kafka_bootstrap, f"rekeyed-{unique_name}", tmp_path)
    topic = cfg.topics.spans_raw.name
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    producer = make_producer(cfg)
    try:
        job.wait_ready(cfg.kafka.bootstrap_servers, cfg.kafka.group_id)
        # partition 1's reader re-keys: a misplaced message of another trace, its copy and the
        # checkpoint saying so committed before the trace below starts
        other = trace_on(0, 2)
        warm = batch_bytes(other, "frontend", [_span(start=time.time_ns(), end=time.time_ns() + 1, parent=None)])
        produce_to(producer, topic, [(1, other, warm, int(time.time() * 1000))])
        wait_for(lambda: rekeyed_ms(cfg, 1) >= 0, "partition 1's checkpoint saying it re-keys", job=job, every=0.05)
        trace_id, root, child, first, backlog = traffic(time.time_ns())
        produce_to(producer, topic, first)
        wait_for(lambda: job.metric("tailsift_spans_ingested_total") >= 2, "the first span read", job=job, every=0.05)
        produce_to(producer, topic, backlog)
        job.wait_drained(2 + len(backlog), timeout=300)  # the warm-up's copy too
        wait_committed(cfg)
        assert job.metric("tailsift_messages_total", outcome="rekeyed") == 2
        assert job.metric("tailsift_decision_points_total", trigger="backlog_limit") == 0
    finally:
        job.stop()

    kept = [t for t in kept_records(cfg) if t["trace_id"] == trace_id]
    assert [(t["late"], t["policy"], sorted(record_span_ids(t))) for t in kept] == [
        (False, "errors", sorted([root, child]))
    ], "the error trace was not kept whole in one on-time KeptTrace"
    decisions = [
        avro.decode(avro.TRACE_DECISION, v)
        for _, _, _, v in read_all(cfg.kafka.bootstrap_servers, cfg.topics.decisions.name, timeout=60)
    ]
    mine = [d for d in decisions if d["trace_id"] == trace_id]
    assert [(d["keep"], d["policy"], len(d["emitted_offsets"])) for d in mine] == [(True, "errors", 2)]


def traffic(now_ns: int):
    """The trace (ID, root and error span IDs), its first message (partition 0) and partition 1's
    backlog with the misplaced error span; (partition, key, value, CreateTime ms) each."""
    t0_ms = now_ns // 1_000_000 + LEAD_MS

    def span(**kw):
        return _span(start=now_ns, end=now_ns + 1_000_000, **kw)

    trace_id = trace_on(0, 2)
    root, child = os.urandom(8), os.urandom(8)
    first = [(0, trace_id, batch_bytes(trace_id, "frontend", [span(parent=None, span_id=root)]), t0_ms)]
    backlog = []
    for _ in range(FILLER):
        other = trace_on(1, 2)
        backlog.append((1, other, batch_bytes(other, "other", [span(parent=None)]), t0_ms))
    error = batch_bytes(trace_id, "cart", [span(parent=root, span_id=child, status="ERROR")])
    backlog.append((1, trace_id, error, t0_ms + 10))  # on the wrong partition: re-keyed to 0
    for _ in range(50):  # partition 1's time moves past the trace's wait before it is read to the end
        other = trace_on(1, 2)
        backlog.append((1, other, batch_bytes(other, "other", [span(parent=None)]), t0_ms + 1_000))
    return trace_id, root, child, first, backlog


def make_env(bootstrap: str, run_id: str, workdir: Path):
    """Two input partitions; only errors kept; the hard bound (1,000 waits: 50 s) far beyond the
    time it takes to read the backlog, so a decision that waits is not forced by it."""
    workdir.mkdir(parents=True, exist_ok=True)
    names = TopicsConfig()
    path, cfg = run_config(
        bootstrap,
        run_id,
        workdir,
        topics={
            key: {"name": f"{run_id}.{getattr(names, key).name}", "partitions": 2} for key in ("spans_raw", "decisions")
        },
        assemble={
            "decision_wait_ms": WAIT_MS,
            "root_quiet_gap_ms": 0,
            "backlog_wait_factor": 1_000,
            # group_read_time: auto (the default) — this worker re-keyed from partition 1 (the
            # warm-up), so it waits for partition 1 at once, without polling for it
        },
        sampling={"policies": [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}]},
        job={
            "data_dir": str(workdir / "faust"),
            "processing_guarantee": "at_least_once",
            "tick_ms": 10,
            "batch_max_messages": 1,
        },
        privacy={"enabled": False},
    )
    assert cfg.topics.spans_raw.partitions == 2
    assert all(r.status == "created" for r in create_topics(cfg))
    return path, cfg


def rekeyed_ms(cfg, partition: int) -> int:
    """When the committed checkpoint of ``partition`` says its reader last re-keyed (-1: never)."""
    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": cfg.kafka.group_id})
    try:
        (tp,) = c.committed([TopicPartition(cfg.topics.spans_raw.name, partition)], timeout=10)
    finally:
        c.close()
    cp = Checkpoint.decode(tp.metadata) if tp.offset >= 0 else None
    return cp.rekeyed_ms if cp is not None else -1


def make_producer(cfg) -> Producer:
    return Producer(
        {"bootstrap.servers": cfg.kafka.bootstrap_servers, "enable.idempotence": True, "acks": "all", "linger.ms": 20}
    )


def produce_to(p: Producer, topic: str, messages: list[tuple[int, bytes, bytes, int]]) -> None:
    """(partition, key, value, CreateTime ms): each to the partition given, whatever its key says."""
    for partition, key, value, ts_ms in messages:
        p.produce(topic, value, key, partition=partition, timestamp=ts_ms)
        p.poll(0)
    assert p.flush(60) == 0
