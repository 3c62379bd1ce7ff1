"""A worker that starts behind its input (a backlog) keeps an error trace whole although the trace's
error span is read long after its first span (issue 13, the full chaos profile: 143 of 2,684 error
traces decided drop before their error spans were read).

Everything is produced before the worker starts: the trace's first span, thousands of messages of
other traffic on the same partition, then its error span — produced 10 ms after the first, well
inside the 20 ms decision wait in Kafka time — then a little more traffic. The worker takes one
message per ``consume`` and flushes every 10 ms, so on its clock the error span is read far more
than a wait after the first span. No assertion is about speed: the job's decision waits on what it
has read, and the test waits on conditions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline.codecs import avro
from pipeline.demo import run_config
from pipeline.jobproc import JobProcess
from pipeline.kafka.partitioner import PARTITIONINGS
from pipeline.readback import read_all
from pipeline.topics import create_topics
from tests.integration.outputs import kept_records, record_span_ids, wait_committed
from tests.spans import batch_bytes
from tests.spans import span as _span

pytestmark = pytest.mark.integration

FILLER = 4_000  # other traffic between the first span and the error span
WAIT_MS = 20


def trace_on(partition: int, partitions: int) -> bytes:
    """A random trace ID whose canonical partition is ``partition`` (so nothing is re-keyed)."""
    place = PARTITIONINGS["tailsift"]
    while True:
        trace_id = os.urandom(16)
        if place.partition(trace_id, partitions) == partition:
            return trace_id


def test_backlog_error_span_read_after_the_wait_is_kept_with_its_trace(kafka_bootstrap, unique_name, tmp_path):
    """Before (worker clock alone): the trace was decided ``decision_wait`` after its first span
    was read — long before its error span, 4,000 offsets on, was read — so it was dropped
    (``not_sampled``) and the error span followed that decision as a late span: no KeptTrace."""
    path, cfg = make_env(kafka_bootstrap, f"backlog-{unique_name}", tmp_path)
    topic, partitions = cfg.topics.spans_raw.name, cfg.topics.spans_raw.partitions
    t0_ms = int(time.time() * 1000) - 60_000  # the backlog: a minute old
    t0_ns = t0_ms * 1_000_000

    def span(**kw):
        return _span(start=t0_ns, end=t0_ns + 1_000_000, **kw)

    trace_id = trace_on(0, partitions)
    root, child = os.urandom(8), os.urandom(8)
    messages = [(trace_id, batch_bytes(trace_id, "frontend", [span(parent=None, span_id=root)]), t0_ms)]
    for _ in range(FILLER):
        other = trace_on(0, partitions)
        messages.append((other, batch_bytes(other, "other", [span(parent=None)]), t0_ms))
    messages.append(
        (trace_id, batch_bytes(trace_id, "cart", [span(parent=root, span_id=child, status="ERROR")]), t0_ms + 10)
    )
    for _ in range(50):  # the partition's time moves past the trace's wait before it is read to the end
        other = trace_on(0, partitions)
        messages.append((other, batch_bytes(other, "other", [span(parent=None)]), t0_ms + 1_000))
    produce_at(cfg, topic, messages)

    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    try:
        job.wait_ready(cfg.kafka.bootstrap_servers, cfg.kafka.group_id)
        job.wait_drained(len(messages), timeout=300)
        wait_committed(cfg)
        assert job.metric("tailsift_decision_points_total", trigger="backlog_limit") == 0
        held = job.metric("tailsift_decision_points_total", trigger="backlog_read")
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
    assert held >= 1  # it (at least) waited for its partition to be read


def make_env(bootstrap: str, run_id: str, workdir: Path):
    workdir.mkdir(parents=True, exist_ok=True)
    path, cfg = run_config(
        bootstrap,
        run_id,
        workdir,
        assemble={"decision_wait_ms": WAIT_MS, "root_quiet_gap_ms": 0, "backlog_wait_factor": 1_000},
        sampling={"policies": [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}]},
        job={
            "data_dir": str(workdir / "faust"),
            "processing_guarantee": "at_least_once",
            "tick_ms": 10,
            "batch_max_messages": 1,
        },
        privacy={"enabled": False},
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    return path, cfg


def produce_at(cfg, topic: str, messages: list[tuple[bytes, bytes, int]]) -> None:
    """Keyed by trace ID (murmur2, the canonical placement), each with its own CreateTime."""
    p = Producer(
        {
            "bootstrap.servers": cfg.kafka.bootstrap_servers,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
        }
    )
    for key, value, ts_ms in messages:
        p.produce(topic, value, key, timestamp=ts_ms)
        p.poll(0)
    assert p.flush(60) == 0
