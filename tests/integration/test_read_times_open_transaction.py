"""The group read time's end offsets behind a transaction left open (issues 11, 13), on the real broker.

A snapshot of the group's read times counts on an owned partition once the worker has read that
partition to the end offset taken after the committed offsets: every re-keyed copy those commits
wrote must lie below it. Before, the end offset was the last stable offset (a read_committed
ListOffsets). A transaction left open on the partition — a killed or zombie worker's, open until
it is fenced or times out — holds the LSO at its first record, below copies other workers commit
after it, and the worker's read_committed position stops at that LSO as well: the snapshot counted
with the copies unread. ``make chaos`` saw it as error traces decided without their re-keyed ERROR
span, which lay above an aborted transaction's records (the end offset this test reads was 0, the
open record's offset, with the committed copy at 1)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.kafka import clients
from pipeline.kafka.group_snapshot import GroupSnapshots
from tests.integration.test_assembly_e2e import make_env

pytestmark = pytest.mark.integration


def transactional(cfg, name: str) -> Producer:  # noqa: ANN001
    producer = Producer({**clients.base(cfg), "transactional.id": f"{name}-{uuid.uuid4().hex}"})
    producer.init_transactions(60)
    producer.begin_transaction()
    return producer


def read_committed_to(cfg, topic: str, end: int, timeout: float = 60.0) -> list[bytes]:  # noqa: ANN001
    """What a read_committed reader of partition 0 gets before its position reaches ``end`` (or the
    timeout: then the position is short of it, which the caller asserts)."""
    consumer = Consumer(
        {
            **clients.base(cfg),
            "group.id": f"probe-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    tp = TopicPartition(topic, 0, 0)
    consumer.assign([tp])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(100, 0.2):
                if m.error() is None:
                    got.append(m.value())
            if consumer.position([TopicPartition(topic, 0)])[0].offset >= end:
                break
        return got
    finally:
        consumer.close()


def test_a_snapshot_end_offset_covers_copies_committed_behind_an_open_transaction(local_kafka, unique_name, tmp_path):
    _, cfg = make_env(local_kafka.bootstrap, f"rto-{unique_name}", tmp_path)
    topic = cfg.topics.spans_raw.name
    zombie = transactional(cfg, "zombie")
    zombie.produce(topic, b"a killed worker's record", partition=0)
    zombie.flush(30)  # written, its transaction left open
    live = transactional(cfg, "live")
    live.produce(topic, b"a re-keyed copy", partition=0)
    live.commit_transaction(60)

    snapshots = GroupSnapshots(cfg, topic, cfg.topics.spans_raw.partitions)
    try:
        _committed, ends = snapshots.fetch([0], 30.0).result(60)
    finally:
        snapshots.close()
    # the open record at 0, the copy at 1, the live transaction's commit marker at 2
    assert ends[0] == 3, f"the end offset stops below the committed copy: {ends[0]}"

    # while the zombie's transaction is open a read_committed reader cannot reach it (the copy is
    # not readable yet: decisions wait) ...
    assert read_committed_to(cfg, topic, ends[0], timeout=5.0) == []
    # ... once it ends (fenced, timed out, aborted) the reader passes it with the copy read
    zombie.abort_transaction(60)
    assert read_committed_to(cfg, topic, ends[0]) == [b"a re-keyed copy"]
