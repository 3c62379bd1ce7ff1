"""``pipeline.kafka.group_snapshot``: the group read-time exchange's snapshot, taken off the
worker's thread with consumers instead of the AdminClient (whose coordinator requests abort the
process after a broker restart; tested against a real broker in
``tests/integration/test_read_times_broker_restart.py``)."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.kafka import clients
from pipeline.kafka import group_snapshot as gs
from tests.support.jobs import make_config


class Reader:
    """A consumer that never joins: answers committed() and watermark queries, optionally only
    once ``release`` is set (a broker slow to answer)."""

    def __init__(self, ends: dict[int, int] | None = None, fail: bool = False) -> None:
        self.ends = ends or {}
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.calls: list[tuple] = []
        self.closed = False

    def committed(self, tps, timeout):  # noqa: ANN001
        self.release.wait()
        self.calls.append(("committed", [tp.partition for tp in tps]))
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return [TopicPartition(tp.topic, tp.partition, 7, metadata="m") for tp in tps]

    def get_watermark_offsets(self, tp, timeout, cached):  # noqa: ANN001
        assert not cached  # asked of the broker, after the committed offsets
        self.calls.append(("ends", tp.partition))
        return (0, self.ends[tp.partition])

    def close(self) -> None:
        self.closed = True


def snapshots(committed: Reader, ends: Reader) -> gs.GroupSnapshots:
    return gs.GroupSnapshots(make_config(), "in", 3, committed=committed, ends=ends)


def test_a_snapshot_is_the_committed_offsets_then_the_owned_end_offsets():
    committed, ends = Reader(), Reader(ends={0: 40, 2: 9})
    result = snapshots(committed, ends).fetch([0, 2], 5.0).result(10)
    assert [(tp.partition, tp.offset, tp.metadata) for tp in result[0]] == [(0, 7, "m"), (1, 7, "m"), (2, 7, "m")]
    assert result[1] == {0: 40, 2: 9}
    assert committed.calls == [("committed", [0, 1, 2])]  # every input partition
    assert ends.calls == [("ends", 0), ("ends", 2)]  # only the owned ones


def test_a_broker_away_fails_the_snapshot_not_the_caller():
    f = snapshots(Reader(fail=True), Reader()).fetch([0], 5.0)
    with pytest.raises(KafkaException):
        f.result(10)


def test_the_callers_thread_never_waits_and_one_snapshot_runs_at_a_time():
    committed = Reader()
    committed.release.clear()  # the broker does not answer yet
    s = snapshots(committed, Reader(ends={0: 1}))
    f = s.fetch([0], 5.0)
    assert not f.done()
    with pytest.raises(RuntimeError):
        s.fetch([0], 5.0)
    committed.release.set()
    assert f.result(10)[1] == {0: 1}


def test_close_leaves_the_consumers_to_a_snapshot_still_running():
    """Closing a consumer destroys librdkafka's handle, which a snapshot still inside committed()
    would then use: it is left open (the process's end frees it); closed once nothing runs."""
    committed, ends = Reader(), Reader(ends={0: 1})
    committed.release.clear()
    s = snapshots(committed, ends)
    s.fetch([0], 5.0)
    gs_wait, gs.CLOSE_WAIT_S = gs.CLOSE_WAIT_S, 0.05
    try:
        s.close()
    finally:
        gs.CLOSE_WAIT_S = gs_wait
    assert not committed.closed and not ends.closed
    committed.release.set()
    s._running.join(10)
    s.close()
    assert committed.closed and ends.closed
    with pytest.raises(RuntimeError):
        s.fetch([0], 5.0).result(1)  # closed: no more snapshots


def test_the_readers_never_join_the_group_and_read_what_is_committed():
    cfg = make_config()
    for conf in (clients.group_offsets_reader(cfg), clients.end_offsets_reader(cfg)):
        assert conf["group.id"] == cfg.kafka.group_id and conf["enable.auto.commit"] is False
    # stable-only offsets (read_committed) would answer nothing while a transaction holds offsets
    assert clients.group_offsets_reader(cfg)["isolation.level"] == "read_uncommitted"
    # the end offsets: the high watermark, above copies committed behind an open transaction
    # (tests/integration/test_read_times_broker_restart.py shows the broker's answers)
    assert clients.end_offsets_reader(cfg)["isolation.level"] == "read_uncommitted"
