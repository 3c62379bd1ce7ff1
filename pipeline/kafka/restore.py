"""Read back recent decisions from ``traces.decisions`` for newly assigned partitions.

Decisions of input partition p live in decision-log partition p. The reader starts at the first
record written at or after ``since_ms − assemble.decision_restore_ms`` — ``since_ms`` comes from the
partition's committed checkpoint (this job's own clock, never a producer's) — and reads to the end
with ``read_committed``. That covers every decision a replayed or late span of the partition can
meet without reading the whole log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.codecs import avro
from pipeline.config import Config
from pipeline.kafka import clients
from pipeline.readback import high_watermarks

log = logging.getLogger("tailsift")


RESTORE_POLL_S = 0.05


class RestoreError(RuntimeError):
    """The decision log could not be read; the caller retries while the broker may come back."""


# errors a broker restart produces on a reader: they end when it is back
_TRANSIENT = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE)


def read_decisions(
    config: Config, since_ms: dict[int, int], timeout: float = 60.0, stopping: Callable[[], bool] = lambda: False
) -> dict[int, list[dict]]:
    """Decoded decision-log records per partition (oldest first), from ``since_ms[p]`` minus the
    restore window. ``stopping()`` true ends the read early (``RestoreError``): the worker was
    asked to stop while it waited for the broker."""
    out: dict[int, list[dict]] = {p: [] for p in since_ms}
    window = config.assemble.decision_restore_ms
    if not since_ms or window == 0:
        return out
    topic = config.topics.decisions.name
    consumer = Consumer(clients.restore_consumer(config))
    try:
        wanted = [TopicPartition(topic, p, max(0, t - window)) for p, t in since_ms.items()]
        starts = consumer.offsets_for_times(wanted, timeout=timeout)
        assign = [tp for tp in starts if tp.offset >= 0]  # -1: nothing written since then
        # read to the end including the newest committed transaction: a read_committed reader hits
        # EOF at the last *stable* offset, which trails the end while a transaction's markers are
        # being written — a restore right after this worker's own commit (a rewind) would miss the
        # decisions it just wrote
        ends = {p: hw[1] for p, hw in high_watermarks(config.kafka, topic, timeout).items()}
        pending = {tp.partition for tp in assign}
        consumer.assign(assign)
        deadline = time.monotonic() + timeout
        while pending:
            if stopping():
                raise RestoreError(f"reading {topic}: stopped before the end")
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic} partitions {sorted(pending)} took over {timeout:.0f} s")
            # a short wait: consume(N, t) returns early only with N messages, and a restore reads a
            # few hundred — 0.5 s here made every assignment's restore take 1.0 s (twice the whole
            # wait: the records, then the end), 0.05 s with this and the reader's 10 ms fetch wait
            # (clients.restore_consumer)
            for msg in consumer.consume(1000, RESTORE_POLL_S):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= ends.get(msg.partition(), 0):
                            pending.discard(msg.partition())
                        continue
                    if err.fatal() or (not err.retriable() and err.code() not in _TRANSIENT):
                        raise RestoreError(f"reading {topic}: {err}")
                    log.info("reading %s: %s (retrying until the deadline)", topic, err)
                    continue
                try:
                    out[msg.partition()].append(avro.decode(avro.TRACE_DECISION, msg.value()))
                except Exception as exc:  # noqa: BLE001 - one bad record must not block a restore
                    log.warning(
                        "%s[%d]@%d: undecodable decision record skipped (%s)",
                        topic,
                        msg.partition(),
                        msg.offset(),
                        type(exc).__name__,
                    )
        return out
    finally:
        consumer.close()
