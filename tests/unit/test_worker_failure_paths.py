"""The worker's failure paths around a broker restart, with its Kafka clients replaced by fakes (the
real ones are exercised by tests/integration/test_data_plane.py and the chaos suite).

Before: a restore that failed while the broker was away (``offsets_for_times`` timing out, a
transport error read from the decision log) raised out of the assign callback; ``run`` then
called ``consumer.close()``, which waits for the unfinished rebalance forever — the chaos short
profile saw workers hang after its broker restart, holding partitions, silent even to SIGTERM."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.kafka import worker as worker_mod
from tests.support.jobs import make_config, make_job


class FakeConsumer:
    def __init__(self, consume_error: Exception):
        self.consume_error = consume_error
        self.closed = False

    def list_topics(self, topic, timeout):  # noqa: ANN001
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def subscribe(self, topics, **callbacks):  # noqa: ANN001
        self.callbacks = callbacks

    def consume(self, n, timeout):  # noqa: ANN001 - what librdkafka does with a callback's exception
        raise self.consume_error

    def close(self):
        self.closed = True


class FakeProducer:
    closed = False

    def close(self) -> None:
        self.closed = True


class FakeGuard:
    """The shutdown guard without its signal handlers and its deadline (which would end pytest)."""

    armed_with: int | None = None

    def install(self) -> None:
        pass

    def arm(self, exit_code: int) -> None:
        self.armed_with = exit_code


def worker(consume_error: Exception, monkeypatch) -> worker_mod.Worker:
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: FakeConsumer(consume_error))
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: FakeProducer())
    w = worker_mod.Worker(make_config(), make_job())
    monkeypatch.setattr(worker_mod.clients, "max_record_bytes", lambda config: 1_000_000)
    w.guard = FakeGuard()
    return w


@pytest.mark.parametrize(
    "error",
    [
        worker_mod.FatalError("restoring partitions [0] failed for 300 s"),
        RuntimeError("an unforeseen error raised inside a rebalance callback"),
    ],
)
def test_an_error_out_of_consume_exits_fatal_without_the_close_that_hangs(error, monkeypatch):
    w = worker(error, monkeypatch)
    assert w.run() == worker_mod.EXIT_FATAL
    assert not w.consumer.closed  # close() would wait for the rebalance the error left unfinished
    assert w.producer.closed
    assert w.guard.armed_with == worker_mod.EXIT_FATAL  # releasing the clients is bounded too


def test_a_restore_waits_out_a_broker_that_is_away(monkeypatch):
    w = worker(RuntimeError("unused"), monkeypatch)
    failures = [
        KafkaException(KafkaError(KafkaError._TIMED_OUT, "offsets_for_times timed out")),
        worker_mod.RestoreError("reading decisions: Local: Broker transport failure"),
    ]
    calls = []

    def restore_once(parts):
        calls.append(parts)
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(w, "_restore_once", restore_once)
    monkeypatch.setattr(worker_mod.time, "sleep", lambda s: None)
    w._restore([0, 1])
    assert calls == [[0, 1]] * 3


def test_a_restore_that_keeps_failing_is_fatal_after_its_patience(monkeypatch):
    w = worker(RuntimeError("unused"), monkeypatch)
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(worker_mod.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(worker_mod.time, "sleep", lambda s: None)

    def restore_once(parts):
        raise TimeoutError("restoring decisions took over 60 s")

    monkeypatch.setattr(w, "_restore_once", restore_once)
    with pytest.raises(worker_mod.FatalError, match="restoring partitions"):
        w._restore([0])


def test_a_stop_signal_ends_a_restore_that_waits_for_the_broker(monkeypatch):
    """Before: the restore retried for its whole patience (300 s) after SIGTERM, which only set a
    flag the loop checks between steps: the worker ignored SIGTERM while the broker was away."""
    w = worker(RuntimeError("unused"), monkeypatch)
    calls = []

    def restore_once(parts):
        calls.append(parts)
        w._stop(15)  # SIGTERM arrives while the broker is away
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

    monkeypatch.setattr(w, "_restore_once", restore_once)
    monkeypatch.setattr(worker_mod.time, "sleep", lambda s: None)
    with pytest.raises(worker_mod.StopRequested, match="restoring partitions"):
        w._restore([0])
    assert calls == [[0]]  # not retried


def test_a_stop_signal_ends_the_wait_for_committed_offsets(monkeypatch):
    """Before: committed offsets were retried up to transaction timeout + 300 s after SIGTERM."""
    w = worker(RuntimeError("unused"), monkeypatch)
    asked = []

    def committed(tps, timeout):  # noqa: ANN001
        asked.append(tps)
        w._stop(15)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets"))

    w.consumer.committed = committed
    monkeypatch.setattr(worker_mod.time, "sleep", lambda s: None)
    with pytest.raises(worker_mod.StopRequested, match="committed offsets"):
        w._committed([0, 1])
    assert len(asked) == 1


def test_a_stop_during_a_restore_exits_unfinished_without_close(monkeypatch):
    w = worker(worker_mod.StopRequested("restoring partitions [0] did not finish"), monkeypatch)
    assert w.run() == worker_mod.EXIT_UNFINISHED
    assert not w.consumer.closed  # the rebalance the restore was in is unfinished
    assert w.producer.closed


class RewindConsumer(FakeConsumer):
    """Two partitions: one read from (a position), one just assigned whose fetcher has not started
    — librdkafka's seek answers _STATE for that one."""

    def __init__(self, seek_blocks: threading.Event | None = None):
        super().__init__(RuntimeError("unused"))
        self.positions = {0: -1001, 1: 120}
        self.seeks: list[tuple[int, int]] = []
        self.seek_blocks = seek_blocks

    def position(self, tps):  # noqa: ANN001
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in tps]

    def committed(self, tps, timeout):  # noqa: ANN001
        return [TopicPartition(tp.topic, tp.partition, 100 + tp.partition) for tp in tps]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):  # noqa: ANN001
        return 0, 500

    def seek(self, tp):  # noqa: ANN001
        if self.seek_blocks is not None:
            self.seek_blocks.wait()
        if self.positions[tp.partition] < 0:
            raise KafkaException(KafkaError(KafkaError._STATE, "Failed to seek to offset: Local: Erroneous state"))
        self.seeks.append((tp.partition, tp.offset))


def rewinding_worker(monkeypatch, consumer: RewindConsumer) -> worker_mod.Worker:
    w = worker(RuntimeError("unused"), monkeypatch)
    w.consumer = consumer
    w.assigned = {0, 1}
    restored = []
    monkeypatch.setattr(w, "_restore", restored.append)
    w.restored = restored
    return w


def test_a_rewind_seeks_only_the_partitions_it_read_from(monkeypatch):
    """Before: every owned partition was sought back, also one assigned a moment ago whose fetcher
    had not started (its committed offsets held back by a dead worker's open transaction) —
    librdkafka refuses that seek (_STATE) and the worker died of it (exit 3). That partition's
    fetch starts at its committed offset anyway."""
    w = rewinding_worker(monkeypatch, RewindConsumer())
    w._rewind()
    assert w.consumer.seeks == [(1, 101)]
    assert w.restored == [[0, 1]]


def test_a_seek_that_does_not_return_ends_the_worker_instead_of_hanging_it(monkeypatch):
    """Before: ``Consumer.seek`` waits for librdkafka without a bound (rd_kafka_seek_partitions(...,
    -1)) on the loop thread: a seek that is never answered hung the worker for good."""
    never = threading.Event()
    w = rewinding_worker(monkeypatch, RewindConsumer(seek_blocks=never))
    monkeypatch.setattr(worker_mod, "SEEK_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(worker_mod.FatalError, match="did not finish"):
            w._rewind()
    finally:
        never.set()  # lets the helper thread end
    assert w.restored == []
