"""Fencing on the real broker (Kafka 4.1): a transaction the coordinator timed out is not a zombie's,
a newer instance's fence is — and a fenced producer closes without a crash.

librdkafka reports both as the same fatal ``_FENCED`` (checked here against the broker: the same
code and text); ``pipeline.kafka.producer`` tells them apart by how long the transaction was open.
Whether the coordinator has aborted a transaction is read from the broker, not waited for by the
clock: a read_committed reader's end offset (the last stable offset) stays below the high
watermark while a transaction is open on a partition, and reaches it with the abort marker."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.job import Record
from pipeline.jobproc import JobProcess
from pipeline.kafka.producer import EmitError, OutputProducer
from pipeline.kafka.worker import EXIT_FATAL
from tests.integration.outputs import assert_kept_exactly_once_and_whole, assert_sli_exact, wait_committed
from tests.integration.test_assembly_e2e import (  # noqa: F401 - jobs is a fixture
    jobs,
    make_env,
    start_job,
    wait_for,
)
from tests.integration.test_data_plane import ASSEMBLE, SLI, finish, generate, in_background

pytestmark = pytest.mark.integration


class Transactions:
    """Whether a transaction is open on any partition of some topics (read from the broker)."""

    def __init__(self, bootstrap: str, topics: dict[str, int]):
        self.partitions = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        base = {"bootstrap.servers": bootstrap, "group.id": f"fence-probe-{uuid.uuid4().hex[:8]}"}
        self.stable = Consumer({**base, "isolation.level": "read_committed"})
        self.end = Consumer({**base, "isolation.level": "read_uncommitted"})

    def open(self) -> bool:
        for tp in self.partitions:
            if self.stable.get_watermark_offsets(tp, timeout=10)[1] < self.end.get_watermark_offsets(tp, timeout=10)[1]:
                return True
        return False

    def close(self) -> None:
        self.stable.close()
        self.end.close()


def topic_and_group(bootstrap: str) -> tuple[str, Consumer]:
    """A fresh 3-partition topic and a consumer-group member holding it (its group metadata is
    what a transaction's offsets are sent with)."""
    topic = f"fence-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        future.result(30)
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-g", "enable.auto.commit": False})
    member.subscribe([topic])
    deadline = time.monotonic() + 60
    while not member.assignment():
        assert time.monotonic() < deadline, "the group member got no assignment"
        member.poll(0.2)
    return topic, member


def committed_values(bootstrap: str, topic: str) -> list[bytes]:
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fence-read-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(3)])
    values, eof, deadline = [], set(), time.monotonic() + 30
    while len(eof) < 3 and time.monotonic() < deadline:
        for m in reader.consume(100, 0.5):
            if m.error() is None:
                values.append(m.value())
            elif m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
    reader.close()
    assert len(eof) == 3, "the topic was not read to its end"
    return values


def records(topic: str, n: int, value: bytes) -> list[Record]:
    return [Record(topic, b"k%d" % i, value) for i in range(n)]


def test_a_producer_fenced_by_a_newer_instance_stays_fenced_and_closes_without_a_crash(kafka_bootstrap):
    """A newer instance with the same transactional id fences the open transaction at once: the
    error is fatal (the worker exits 3 and never writes again), nothing of that transaction is
    visible to read_committed readers, and closing the fenced producer does not fail.

    Before: close() flushed the fatal producer and raised ``SystemError: <built-in method
    __format__ of confluent_kafka.cimpl.KafkaError object> returned a result with an exception
    set`` — confluent-kafka 2.16.1 leaves the fatal error pending while it serves the queued
    delivery reports, and the worker's delivery callback formatted a KafkaError (CI: the survivor's
    log on its way out after exit 3)."""
    topic, member = topic_and_group(kafka_bootstrap)
    conf = {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic}-w1", "transaction.timeout.ms": 10_000}
    zombie = OutputProducer(dict(conf))
    zombie.produce(records(topic, 10, b"zombie"))
    newer = Producer(dict(conf))
    newer.init_transactions(30)
    with pytest.raises(EmitError) as raised:
        zombie.transaction(
            records(topic, 1000, b"zombie"), [TopicPartition(topic, 0, 1)], member.consumer_group_metadata()
        )
    assert raised.value.fatal
    zombie.close()
    newer.begin_transaction()
    newer.produce(topic, b"newer", b"k")
    newer.commit_transaction(30)
    assert committed_values(kafka_bootstrap, topic) == [b"newer"]
    member.close()


def test_a_transaction_the_coordinator_timed_out_goes_on_with_a_new_producer(kafka_bootstrap):
    """The coordinator aborts a transaction left open past transaction.timeout.ms and bumps the
    epoch; the next call is fenced (fatal _FENCED). Before: fatal — the worker exited 3. Now a new
    producer takes over the transactional id, the failure is an ordinary one (the worker rewinds),
    and the next transaction commits; the timed-out one's records are never visible."""
    topic, member = topic_and_group(kafka_bootstrap)
    conf = {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic}-w1", "transaction.timeout.ms": 1000}
    out = OutputProducer(dict(conf))
    out.produce(records(topic, 10, b"timed out"))
    transactions = Transactions(kafka_bootstrap, {topic: 3})
    try:
        wait_for(transactions.open, "the transaction to reach the broker", timeout=30)
        wait_for(lambda: not transactions.open(), "the coordinator to abort the transaction", timeout=60)
    finally:
        transactions.close()
    with pytest.raises(EmitError) as raised:
        out.transaction(
            records(topic, 5, b"timed out"), [TopicPartition(topic, 0, 1)], member.consumer_group_metadata()
        )
    assert not raised.value.fatal
    out.transaction(records(topic, 3, b"kept"), [TopicPartition(topic, 0, 1)], member.consumer_group_metadata())
    out.close()
    assert sorted(committed_values(kafka_bootstrap, topic)) == [b"kept"] * 3
    member.close()


def test_a_worker_whose_transaction_the_coordinator_timed_out_goes_on_exactly(
    kafka_bootstrap,
    unique_name,
    tmp_path,
    jobs,  # noqa: F811
):
    """A worker frozen (SIGSTOP: a GC or VM pause) with a transaction open, long enough for the
    coordinator to time the transaction out but not for the group to expel it — the rightful
    owner of its partitions still. Woken, its next call is fenced; it takes a new producer,
    rewinds and goes on: every kept span exactly once, SLI counts exact.

    Before: the fence was fatal — exit 3, the partitions unprocessed until a restart (CI: the
    survivor of test_a_worker_leaves_a_two_worker_group_mid_stream[kill], its transaction open
    ~21 s across a restore)."""
    path, cfg = make_env(
        kafka_bootstrap,
        f"fence-{unique_name}",
        tmp_path,
        assemble=ASSEMBLE,
        sli=SLI,
        # short, for a short freeze; not so short that a slow step on a loaded machine times one out
        job={"transaction_timeout_ms": 3000},
        kafka={"session_timeout_ms": 45_000},  # the freeze below stays well inside the session
    )
    worker = start_job(jobs, path, cfg, tmp_path / "job.log")
    t = cfg.topics
    outputs = Transactions(
        kafka_bootstrap,
        {t.traces_kept.name: t.traces_kept.partitions, t.decisions.name: t.decisions.partitions},
    )
    traces: list = []
    thread, result = in_background(lambda: generate(cfg, traces, 500, 100, 29))
    try:
        wait_for(
            lambda: worker.metric("tailsift_records_produced_total", topic=t.traces_kept.name) > 0,
            "the worker to write kept traces",
            job=worker,
        )

        def frozen_with_a_transaction_open() -> bool:
            worker.suspend()
            if outputs.open():
                return True
            worker.resume()
            return False

        wait_for(frozen_with_a_transaction_open, "the worker frozen with a transaction open", timeout=60)
        wait_for(lambda: not outputs.open(), "the coordinator to abort the frozen worker's transaction", timeout=60)
    finally:
        worker.resume()
        outputs.close()
    stats = finish(thread, result)
    worker.wait_idle(timeout=120)  # raises as soon as it exits (before: 3)
    wait_committed(cfg, timeout=120)
    assert worker.metric("tailsift_producers_replaced_total") >= 1
    assert sum(tr.span_count for tr in traces) == stats.spans
    assert_kept_exactly_once_and_whole(cfg, traces, min_errors=20)
    assert_sli_exact(cfg, traces)


def test_a_worker_whose_transactional_id_a_newer_instance_took_over_exits_and_the_newer_goes_on(
    kafka_bootstrap,
    unique_name,
    tmp_path,
    jobs,  # noqa: F811
):
    """Two processes with the same ``job.worker_id`` — a replacement started while the old worker
    still runs: the old one is the zombie. The newer one's init_transactions fences the old one's
    producer mid-interval, its transaction younger than the timeout: the old worker exits 3 and
    writes nothing more, the newer one takes its partitions and the outputs stay exact.

    Guards the rule that tells this fence from a coordinator's timeout (both are librdkafka's
    ``_FENCED``): were every fence answered with a new producer, the old worker would take the id
    back, fencing the newer one, and the two would fence each other for as long as both ran."""
    run_id = f"fence-z-{unique_name}"
    path1, cfg = make_env(kafka_bootstrap, run_id, tmp_path / "w1", assemble=ASSEMBLE, sli=SLI, job={"worker_id": "w1"})
    path2, cfg2 = make_env(
        kafka_bootstrap, run_id, tmp_path / "w2", create=False, assemble=ASSEMBLE, sli=SLI, job={"worker_id": "w1"}
    )
    old = start_job(jobs, path1, cfg, tmp_path / "w1.log")
    traces: list = []
    thread, result = in_background(lambda: generate(cfg, traces, 500, 100, 31))
    wait_for(
        lambda: old.metric("tailsift_records_produced_total", topic=cfg.topics.traces_kept.name) > 0,
        "the first worker to write kept traces",
        job=old,
    )
    newer = JobProcess(path2, cfg2.metrics.port, tmp_path / "w2.log").start()
    jobs.append(newer)
    wait_for(lambda: old.proc.poll() is not None, "the fenced worker to exit", timeout=60, job=newer)
    assert old.proc.returncode == EXIT_FATAL, old.log_tail(20)
    stats = finish(thread, result)
    newer.wait_idle(timeout=120)
    wait_committed(cfg, timeout=120)
    assert newer.metric("tailsift_producers_replaced_total") == 0
    assert sum(tr.span_count for tr in traces) == stats.spans
    assert_kept_exactly_once_and_whole(cfg, traces, min_errors=20)
    assert_sli_exact(cfg, traces)
