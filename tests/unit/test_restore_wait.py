"""The decision restore does not wait out librdkafka's timeouts (a restore pauses the worker at
every assignment): it reads a few hundred records to an end it knows, and consume(N, t) returns
early only once it has N messages — a 0.5 s wait there made every restore take 1.0 s."""

from confluent_kafka import KafkaError, TopicPartition

from pipeline.config import Config
from pipeline.kafka import restore


class _Eof:
    def __init__(self, partition: int, offset: int):
        self._p, self._o = partition, offset

    def error(self):  # noqa: ANN201 - a KafkaError stand-in
        return self

    def code(self) -> int:
        return KafkaError._PARTITION_EOF

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class _Consumer:
    """librdkafka's consume(N, t) as the restore meets it at the end of a short log: fewer than N
    messages, so each call lasts its whole timeout (counted here, not slept)."""

    seen: list = []

    def __init__(self, conf: dict):
        _Consumer.seen.append(self)
        self.conf, self.waited = conf, 0.0
        self.queue: list = []

    def offsets_for_times(self, wanted: list, timeout: float) -> list:
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in wanted]

    def assign(self, tps: list) -> None:
        self.queue = [_Eof(tp.partition, 0) for tp in tps]  # empty partitions: at their end at once

    def consume(self, num: int, timeout: float) -> list:
        out, self.queue = self.queue[:num], self.queue[num:]
        if len(out) < num:
            self.waited += timeout
        return out

    def close(self) -> None:
        pass


def test_a_restore_waits_for_neither_a_full_batch_nor_a_held_fetch(monkeypatch):
    monkeypatch.setattr(restore, "Consumer", _Consumer)
    monkeypatch.setattr(restore, "high_watermarks", lambda *a: {p: (0, 0) for p in range(3)})
    _Consumer.seen = []
    out = restore.read_decisions(Config(), {0: 1_000, 1: 1_000, 2: 1_000})
    assert out == {0: [], 1: [], 2: []}
    (consumer,) = _Consumer.seen
    assert consumer.waited <= 0.1  # was 0.5: one consume() call's whole timeout
    assert consumer.conf["fetch.wait.max.ms"] <= 50  # the broker's default holds a fetch 500 ms
