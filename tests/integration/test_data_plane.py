"""The librdkafka data plane on the real broker: failed transactions rewind, a zombie is fenced,
the restore does not trust producer clocks, mis-partitioned input is re-keyed to one partitioner
— and after each, every kept span is in traces.kept exactly once, every error trace whole, and the
SLI counts equal what was produced."""

from __future__ import annotations

import threading

import pytest

from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.jobproc import JobProcess
from tests.integration.outputs import assert_kept_exactly_once_and_whole, assert_sli_exact, wait_committed
from tests.integration.test_assembly_e2e import (  # noqa: F401 - jobs is a fixture
    jobs,
    make_env,
    start_job,
    wait_for,
    wait_group_members,
)

pytestmark = pytest.mark.integration

ASSEMBLE = {"decision_wait_ms": 1500}
SLI = {"window_seconds": 2, "grace_seconds": 1}


def generate(cfg, traces: list, count: int, rate: float, seed: int, **kw):
    return produce(
        cfg.kafka.bootstrap_servers,
        cfg.topics.spans_raw.name,
        count=count,
        duration_s=None,
        rate=rate,
        config=GeneratorConfig(seed=seed, error_rate=0.1),
        progress=False,
        on_trace=traces.append,
        **kw,
    )


def in_background(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["stats"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict):
    thread.join(300)
    assert not thread.is_alive(), "the generator did not finish"
    if "error" in result:
        raise result["error"]
    return result["stats"]


def test_injected_write_failures_rewind_and_lose_or_double_nothing(kafka_bootstrap, unique_name, tmp_path, jobs):  # noqa: F811
    """Transactions fail at every step (after begin, after a loop step's records went into the open
    transaction, after the commit's records, after the offsets, before the commit) while the input
    is mis-partitioned, so re-keyed copies sit in the failed
    transactions. Each failure aborts and rewinds the worker in place (no restart); nothing of
    an aborted transaction is read back (read_committed input) and nothing is lost.

    Before: a failed write inside the Faust agent was swallowed by Faust's supervisor restart — the
    outbox was gone, commits stalled and the next checkpoint claimed the lost SLI counts and dead
    letters were written (20 spans produced, 10 counted after the restart); and the input was read
    read_uncommitted, so re-keyed copies of an aborted transaction were consumed and the original
    re-keyed again: duplicates in SLIs and kept traces."""
    path, cfg = make_env(kafka_bootstrap, f"dp-f-{unique_name}", tmp_path, assemble=ASSEMBLE, sli=SLI)
    # early enough that all four fire within the run (~8 transactions: a failed step ends its
    # transaction before the later steps count); at 3/5/7/9 it took ~13, which a fast or idle-early
    # run did not always reach (3 rewinds seen)
    # (step counts loop steps that produced records: several per transaction)
    faults = "begin:2,produce:3,offsets:4,commit:5,step:9"
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log", env={"TAILSIFT_INJECT_FAULTS": faults}).start()
    jobs.append(job)
    job.wait_ready(cfg.kafka.bootstrap_servers, cfg.kafka.group_id)
    traces: list = []
    # keyed by trace ID but partitioned with librdkafka's default hash (CRC32): most messages are
    # off their canonical partition and get re-keyed, inside the transactions that fail
    stats = generate(cfg, traces, count=700, rate=80, seed=21, producer_config={"partitioner": "consistent_random"})
    wait_committed(cfg, timeout=300)
    job.wait_idle(timeout=300)
    # each injected fault rewinds once; an abort with records in flight can make the next
    # transaction fail too (librdkafka: OUT_OF_ORDER_SEQUENCE_NUMBER, abortable) — one more rewind
    assert job.metric("tailsift_rewinds_total") >= 5
    assert job.metric("tailsift_messages_total", outcome="rekeyed") > 0
    assert job.proc.poll() is None  # rewound in place, never restarted
    assert sum(t.span_count for t in traces) == stats.spans
    assert_kept_exactly_once_and_whole(cfg, traces, min_errors=30)
    assert_sli_exact(cfg, traces)


def test_a_producer_clock_15_minutes_fast_does_not_break_the_restore(kafka_bootstrap, unique_name, tmp_path, jobs):  # noqa: F811
    """kill -9 mid-stream, restart, with input messages stamped by a producer whose clock is 15
    minutes fast. Before: the restore looked the decision log up by the committed input message's
    timestamp minus decision_restore_ms, found nothing — not even the checkpoint — and SLIs were
    double-counted and kept traces re-emitted, silently."""
    path, cfg = make_env(kafka_bootstrap, f"dp-c-{unique_name}", tmp_path, assemble=ASSEMBLE, sli=SLI)
    job = start_job(jobs, path, cfg, tmp_path / "job.log")
    traces: list = []
    thread, result = in_background(lambda: generate(cfg, traces, 800, 160, 22, clock_skew_ms=15 * 60 * 1000))
    wait_for(
        lambda: (
            job.metric("tailsift_records_produced_total", topic=cfg.topics.traces_kept.name) > 0
            and job.metric("tailsift_records_produced_total", topic=cfg.topics.sli_windows.name) > 0
        ),
        "the job to write kept traces and SLI partials",
        job=job,
    )
    assert thread.is_alive(), "the generator finished before the kill: not mid-stream"
    job.kill()
    job2 = start_job(jobs, path, cfg, tmp_path / "job2.log")
    stats = finish(thread, result)
    wait_committed(cfg, timeout=300)
    job2.wait_idle(timeout=300)
    assert sum(t.span_count for t in traces) == stats.spans
    assert_kept_exactly_once_and_whole(cfg, traces, min_errors=40)
    assert_sli_exact(cfg, traces)


def test_a_zombie_worker_is_fenced(kafka_bootstrap, unique_name, tmp_path, jobs):  # noqa: F811
    """One of two workers is frozen (SIGSTOP) mid-stream past its session timeout, so the group
    hands its partitions to the other; then it wakes (SIGCONT) with buffered traces and open
    windows. Its commits carry a stale group generation (KIP-447), so nothing it writes becomes
    visible to read_committed readers: the outputs stay exact.

    Before: the transactional id was host:pid and offsets were committed outside the transaction,
    so a resumed zombie could commit one more transaction of outputs its partitions' new owner
    produced again."""
    run_id = f"dp-z-{unique_name}"
    path1, cfg = make_env(kafka_bootstrap, run_id, tmp_path / "w1", assemble=ASSEMBLE, sli=SLI)
    path2, cfg2 = make_env(kafka_bootstrap, run_id, tmp_path / "w2", create=False, assemble=ASSEMBLE, sli=SLI)
    survivor = start_job(jobs, path1, cfg, tmp_path / "w1.log")
    zombie = JobProcess(path2, cfg2.metrics.port, tmp_path / "w2.log").start()
    jobs.append(zombie)
    wait_group_members(cfg, 2)
    traces: list = []
    thread, result = in_background(lambda: generate(cfg, traces, 1000, 120, 23))
    wait_for(
        lambda: (
            zombie.metric("tailsift_records_produced_total", topic=cfg.topics.traces_kept.name) > 0
            and zombie.metric("tailsift_spans_buffered") > 0
        ),
        "the second worker to write output and buffer traces",
        job=zombie,
    )
    zombie.suspend()
    wait_group_members(cfg, 1)  # its session expired: the survivor owns every partition now
    wait_for(
        lambda: survivor.metric("tailsift_records_produced_total", topic=cfg.topics.sli_windows.name) > 0,
        "the survivor to write",
        job=survivor,
    )
    zombie.resume()
    stats = finish(thread, result)
    wait_committed(cfg, timeout=300)
    survivor.wait_idle(timeout=300)
    zombie.wait_idle(timeout=300)  # it rejoined the group after waking, or holds nothing
    assert sum(t.span_count for t in traces) == stats.spans
    assert_kept_exactly_once_and_whole(cfg, traces, min_errors=50)
    assert_sli_exact(cfg, traces)


def test_a_5000_span_kept_trace_and_a_2_mib_span_leave_without_stopping_the_job(
    kafka_bootstrap,
    unique_name,
    tmp_path,
    jobs,  # noqa: F811
):
    """A kept trace larger than the output topic's max.message.bytes leaves in parts that
    reassemble to every span exactly once; a span larger than any record may be is dead-lettered
    (span_too_large) and the rest of its trace kept; no transaction fails, the job never stops.

    Before: the kept 5,000-span trace became one record over the broker's limit, the transaction
    failed with MSG_SIZE_TOO_LARGE, the worker exited, restarted, replayed the trace and failed
    again — a crash loop."""
    import os
    import time

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    from pipeline.codecs import avro
    from pipeline.kafka.partitioner import canonical_partition
    from pipeline.readback import read_all
    from tests.integration.outputs import kept_records
    from tests.spans import batch_bytes, span

    # ingest.max_span_bytes (512 KiB by default) would refuse the 2 MiB span at ingest already
    # (tests/unit/test_hostile_kinds.py); raised, the output path must still cope with it
    path, cfg = make_env(
        kafka_bootstrap, f"dp-s-{unique_name}", tmp_path, assemble=ASSEMBLE, sli=SLI, ingest={"max_span_bytes": 4 << 20}
    )
    # producers may write messages up to 4 MiB to the input; the outputs keep the broker's ~1 MB
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        cfg.topics.spans_raw.name,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(4 << 20), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    job = start_job(jobs, path, cfg, tmp_path / "job.log")

    t0 = time.time_ns() - 60 * 10**9
    big, huge = os.urandom(16), os.urandom(16)
    messages = []
    attrs = {"payload": "x" * 200}
    for m in range(10):  # 10 messages × 500 spans, one of them an error: the trace is kept
        spans = [
            span(
                t0 + i,
                t0 + i + 1_000,
                "ERROR" if (m, i) == (9, 499) else "UNSET",
                None if (m, i) == (0, 0) else b"p" * 8,
            )
            for i in range(500)
        ]
        messages.append((big, batch_bytes(big, f"svc{m}", spans, attributes=attrs)))
    messages.append(
        (huge, batch_bytes(huge, "svc", [span(t0, t0 + 1_000, "ERROR", None)], attributes={"blob": "y" * (2 << 20)}))
    )
    messages.append((huge, batch_bytes(huge, "svc", [span(t0, t0 + 1_000), span(t0, t0 + 2_000)])))
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 5 << 20, "partitioner": "murmur2_random"}
    )
    for key, value in messages:
        producer.produce(cfg.topics.spans_raw.name, value, key)
    assert producer.flush(30) == 0

    job.wait_drained(5_003, timeout=300)
    wait_committed(cfg, timeout=300)
    assert job.proc.poll() is None and job.metric("tailsift_rewinds_total") == 0
    records = kept_records(cfg)
    parts = [r for r in records if r["trace_id"] == big]
    assert len(parts) >= 2 and {r["parts"] for r in parts} == {len(parts)}
    assert sorted(r["part"] for r in parts) == list(range(len(parts)))
    span_ids = [s["span_id"] for r in parts for b in r["batches"] for s in b["spans"]]
    assert len(span_ids) == 5_000 and len(set(span_ids)) == 5_000
    (rest,) = [r for r in records if r["trace_id"] == huge]
    assert rest["span_count"] == 2  # the 2 MiB span is out, its trace's other spans kept
    dead = [avro.decode(avro.DEAD_LETTER, v) for _, _, _, v in read_all(kafka_bootstrap, cfg.topics.deadletter.name)]
    assert [(d["reason"], d["partition"]) for d in dead] == [("span_too_large", canonical_partition(huge, 6))]
    for _, _, _, value in read_all(kafka_bootstrap, cfg.topics.traces_kept.name):
        assert len(value) <= 1_000_000
