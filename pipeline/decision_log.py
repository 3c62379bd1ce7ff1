"""Restore recent decisions from ``traces.decisions`` when partitions are assigned.

Decisions of input partition p live in decision-log partition p. On assignment the worker reads
that partition with ``read_committed`` (aborted transactions of a dead worker never count) from
``decision_restore_ms`` before the time of the partition's committed input offset — the oldest
message it will read again — to the end. That covers every decision a replayed or late span can
meet, and the partition's newest checkpoint record, without reading the whole log.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pipeline.codecs import avro
from pipeline.config import Config

log = logging.getLogger("tailsift")


def _committed_input_time_ms(config: Config, partitions: list[int], timeout: float) -> dict[int, int]:
    """Per partition: the timestamp of the message at the group's committed input offset (now if
    the partition is fully consumed or has no committed offset yet... then everything is replayed,
    and the restore reaches back from the first message)."""
    now_ms = int(time.time() * 1000)
    topic = config.topics.spans_raw.name
    probe = Consumer(
        {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "group.id": config.kafka.group_id,  # read (never commit) the job group's offsets
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        out: dict[int, int] = {}
        starts = []
        for tp in committed:
            if tp.offset < 0:
                starts.append(TopicPartition(topic, tp.partition, OFFSET_BEGINNING))
            else:
                starts.append(TopicPartition(topic, tp.partition, tp.offset))
        probe.assign(starts)
        pending = {tp.partition for tp in starts}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = probe.poll(0.5)
            if msg is None:
                continue
            p = msg.partition()
            if p not in pending:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    out[p] = now_ms
                    pending.discard(p)
                continue
            out[p] = msg.timestamp()[1]
            pending.discard(p)
            probe.pause([TopicPartition(topic, p)])
        for p in pending:
            out[p] = now_ms
        return out
    finally:
        probe.close()


def read(config: Config, partitions: list[int], timeout: float = 60.0) -> dict[int, list[dict]]:
    """Decoded decision-log records per partition, oldest first."""
    if not partitions or config.assemble.decision_restore_ms == 0:
        return {p: [] for p in partitions}
    topic = config.topics.decisions.name
    since = _committed_input_time_ms(config, partitions, timeout)
    consumer = Consumer(
        {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "group.id": f"tailsift-restore-{uuid.uuid4().hex}",  # assign() only: never joins or commits
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    out: dict[int, list[dict]] = {p: [] for p in partitions}
    try:
        wanted = [TopicPartition(topic, p, max(0, since[p] - config.assemble.decision_restore_ms)) for p in partitions]
        starts = consumer.offsets_for_times(wanted, timeout=timeout)
        pending = set()
        assign = []
        for tp in starts:
            if tp.offset >= 0:  # -1: nothing written since then
                assign.append(tp)
                pending.add(tp.partition)
        consumer.assign(assign)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic} partitions {sorted(pending)} took over {timeout:.0f} s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise RuntimeError(f"reading {topic}: {err}")
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
