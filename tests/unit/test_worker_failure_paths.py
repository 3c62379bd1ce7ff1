"""The worker's failure paths around a broker restart, with its Kafka clients replaced by fakes (the
real ones are exercised by tests/integration/test_data_plane.py and the chaos suite).

Before: a restore that failed while the broker was away (``offsets_for_times`` timing out, a
transport error read from the decision log) raised out of the assign callback; ``run`` then
called ``consumer.close()``, which waits for the unfinished rebalance forever — the chaos short
profile saw workers hang after its broker restart, holding partitions, silent even to SIGTERM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

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


def worker(consume_error: Exception, monkeypatch) -> worker_mod.Worker:
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: FakeConsumer(consume_error))
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: FakeProducer())
    w = worker_mod.Worker(make_config(), make_job())
    monkeypatch.setattr(worker_mod.clients, "max_record_bytes", lambda config: 1_000_000)
    monkeypatch.setattr(worker_mod.signal, "signal", lambda *a: None)
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
