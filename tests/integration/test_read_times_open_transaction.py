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
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.kafka import clients
from pipeline.kafka import read_times as rt
from pipeline.kafka.checkpoint import Checkpoint
from pipeline.kafka.group_snapshot import GroupSnapshots
from tests.integration.test_assembly_e2e import make_env
from tests.support.jobs import make_config

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


def _producer(bootstrap: str, txn_id: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "transaction.timeout.ms": 60_000})
    p.init_transactions(60)
    return p


def test_read_time_waits_for_copies_committed_above_an_open_transaction(local_kafka):
    """The exchange as the worker runs it (``GroupReadTimes``): transaction C (a worker killed
    mid-transaction) writes to partition 0 first; then worker A writes its re-keyed copy there and
    commits it, and partition 1's checkpoint — A's read time — after it. Before: A's read time was
    in force at position 0 within a second, the copy at offset 1 unread (found by ``make chaos``'s
    crash storm as error traces decided without their ERROR copy, and written as an xfail here)."""
    run = uuid.uuid4().hex[:8]
    topic, group = f"rt-open-txn-{run}", f"rt-open-txn-{run}"
    admin = AdminClient({"bootstrap.servers": local_kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(60)
    c = _producer(local_kafka.bootstrap, f"{run}-C")
    a = _producer(local_kafka.bootstrap, f"{run}-A")
    closing: list = []
    try:
        c.begin_transaction()
        c.produce(topic, b"C: re-keyed here, its worker killed before the commit", b"c", partition=0)
        assert c.flush(30) == 0
        a.begin_transaction()
        a.produce(topic, b"A: the copy of an error span", b"a", partition=0)
        assert a.flush(30) == 0
        a.commit_transaction(60)  # the copy at offset 1 of partition 0, committed
        # A's checkpoint for partition 1, visible after its copy: read up to 200 s (Kafka time)
        committer = Consumer({"bootstrap.servers": local_kafka.bootstrap, "group.id": group})
        try:
            cp = Checkpoint(through=4, since_ms=0, read_ms=200_000, rekeyed_ms=int(time.time() * 1000)).encode()
            _commit(committer, [TopicPartition(topic, 1, 5, metadata=cp)])
        finally:
            committer.close()

        cfg = make_config(kafka={"bootstrap_servers": local_kafka.bootstrap, "group_id": group})
        g = rt.GroupReadTimes(cfg, topic, 2)
        closing.append(g)
        g.only_rekeying = False  # assemble.group_read_time: true — every other partition is waited for
        # the reader of partition 0 is at offset 0: C's open record holds it there (read_committed)
        deadline = time.monotonic() + 10
        seen = rt.UNKNOWN_NS
        while time.monotonic() < deadline and seen == rt.UNKNOWN_NS:
            seen = g.update({0}, {0: 0}, time.monotonic())[0]
            time.sleep(0.05)
        assert seen == rt.UNKNOWN_NS, "a read time in force with the copy it vouches for unread (offset 1)"
        # once C has ended, the reader reads the copy: from its position then on, A's read time holds
        c.abort_transaction(60)
        c = None
        position = _read_to_end(local_kafka.bootstrap, topic)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and seen == rt.UNKNOWN_NS:
            seen = g.update({0}, {0: position}, time.monotonic())[0]
            time.sleep(0.05)
        assert seen == 200_000 * 1_000_000
    finally:
        for g in closing:
            g.close()
        if c is not None:
            c.abort_transaction(60)
        admin.delete_topics([topic])


def _commit(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Commit, asked again while the group coordinator loads (a broker just started)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _read_to_end(bootstrap: str, topic: str) -> int:
    """A read_committed reader's position on partition 0 once it has read everything readable."""
    r = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        r.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = r.poll(0.5)
            if (
                msg is not None
                and msg.error() is not None
                and msg.partition() == 0
                and msg.error().code() == KafkaError._PARTITION_EOF
            ):
                return r.position([TopicPartition(topic, 0)])[0].offset
        raise TimeoutError("partition 0 not read to its end")
    finally:
        r.close()
