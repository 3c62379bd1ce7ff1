"""Read a topic from the beginning to its current end with a plain consumer (no group, no commits).

Used by ``tailsift report``, the demo, the benchmark floor and the integration tests. ``bootstrap`` is
an address (with the security settings of the config the command loaded) or a ``kafka:`` section."""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.config_kafka import KafkaConfig
from pipeline.kafka import clients


def high_watermarks(bootstrap: str | KafkaConfig, topic: str, timeout: float) -> dict[int, tuple[int, int]]:
    """Per partition (low, high) including records of transactions not yet complete: a
    read_committed consumer is told the last *stable* offset instead, which trails the end while a
    just-committed transaction's markers are still being written — a reader that stopped there
    would miss the newest committed records."""
    probe = Consumer(
        {
            **clients.connection(bootstrap),
            "group.id": "tailsift-readback",
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        meta = probe.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(f"topic {topic!r} not found")
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in meta.partitions}
    finally:
        probe.close()


def read_all(
    bootstrap: str | KafkaConfig, topic: str, timeout: float = 30.0, batch: int = 500
) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    """Yield (partition, offset, key, value) of every committed record now in ``topic`` (waiting,
    up to ``timeout``, for transactions in flight to complete: their records count if committed)."""
    consumer = Consumer(
        {
            **clients.connection(bootstrap),
            "group.id": "tailsift-readback",  # required by librdkafka; never committed
            "enable.auto.commit": False,
            # EOF, not "offset + 1 == high watermark": in a transactional topic the last offsets are
            # commit markers no consumer ever sees, and read_committed stops at the last stable offset
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        ends: dict[int, int] = {}
        assign = []
        for p, (low, high) in high_watermarks(bootstrap, topic, timeout).items():
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return
        consumer.assign(assign)
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(batch, timeout=0.5):
                p, off = msg.partition(), msg.offset()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and p in ends and off >= ends[p] - 1:
                        del ends[p]
                    continue
                if p in ends:
                    yield p, off, msg.key(), msg.value()
                    if off + 1 >= ends[p]:
                        del ends[p]
        if ends:
            raise TimeoutError(f"{topic}: did not reach the end of partitions {sorted(ends)} in {timeout}s")
    finally:
        consumer.close()
