"""The group's read time (issue 13: the crash storm's remaining misses were error traces decided
before the re-keyed copies of their error spans — from another partition's backlog, a killed
worker's say — arrived; each partition's own read progress cannot see that).

The assembler's side: a trace on a partition read to the end still waits until the group's read
time there passes its stamp + wait, bounded as every hold is. The data plane's side: what a worker
commits as each partition's read time (``Worker._commit_offsets``) and how it turns the group's
committed read times into a per-partition floor (``pipeline.kafka.read_times``)."""

from __future__ import annotations

import time
from concurrent.futures import Future

from confluent_kafka import TopicPartition

from operators.read_progress import REACHED, UNKNOWN
from pipeline.kafka import read_times as rt
from pipeline.kafka import worker as worker_mod
from pipeline.kafka.checkpoint import Checkpoint
from tests.support.jobs import make_job
from tests.unit.test_backlog_guard import NOW0, T0_MS, WAIT, A, assembler, filler, message

MS = 1_000_000


def test_a_caught_up_partition_waits_for_the_groups_read_time():
    """Partition 0 is read to the end, so its own progress holds nothing; the group's read time
    there (how far partition 1 is read, its copies written and read back here) is below A's stamp
    + wait: A is held — and keeps its trigger when the group lets it go (no backlog here)."""
    a = assembler()
    a.set_group_read_times({0: T0_MS * MS})
    message(a, A, T0_MS, NOW0, "first", parent=None)
    assert a.due(NOW0 + WAIT) == [] and len(a) == 1
    message(a, A, T0_MS + 500, NOW0 + 2 * WAIT, "copy", status="ERROR")  # the re-keyed error span
    a.set_group_read_times({0: (T0_MS + 999) * MS})
    assert a.due(NOW0 + 2 * WAIT) == []  # 1 ms short of the wait
    a.set_group_read_times({0: (T0_MS + 1_000) * MS})
    (buf,) = a.due(NOW0 + 2 * WAIT)
    assert (buf.trace_id, buf.messages, buf.trigger, buf.forced_reason) == (A, ["first", "copy"], "decision_wait", "")


def test_held_for_its_own_partition_it_leaves_as_backlog_read():
    a = assembler()
    a.set_behind([0])
    a.set_group_read_times({0: (T0_MS + 5_000) * MS})  # the group is far enough: its own partition is not
    message(a, A, T0_MS, NOW0)
    assert a.due(NOW0 + WAIT) == []
    filler(a, T0_MS + 1_000, NOW0 + WAIT)
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + WAIT)] == [(A, "backlog_read")]


def test_an_unknown_group_read_time_holds_up_to_the_hard_bound():
    """No read time known for another partition (nothing committed with one: a worker never
    started, say): the trace waits, but only until ``backlog_wait_factor`` × wait."""
    a = assembler(factor=3)
    a.set_group_read_times({0: UNKNOWN})
    message(a, A, T0_MS, NOW0)
    assert a.due(NOW0 + 3 * WAIT - 1) == []
    (buf,) = a.due(NOW0 + 3 * WAIT)
    assert (buf.trace_id, buf.trigger, buf.forced_reason) == (A, "backlog_limit", "backlog_limit")


def test_the_root_quiet_point_waits_for_the_group_too():
    """A rooted trace quiet for the gap is held (not decided) while the group's read time is
    below its newest stamp + gap, and leaves as ``root_quiet`` once it passes."""
    a = assembler(root_quiet_gap_ns=WAIT // 2)
    a.set_group_read_times({0: T0_MS * MS})
    message(a, A, T0_MS, NOW0, parent=None)
    assert a.due(NOW0 + WAIT // 2) == []
    a.set_group_read_times({0: (T0_MS + WAIT // 2 // MS) * MS})
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + WAIT // 2)] == [(A, "root_quiet")]


def test_without_a_group_read_time_nothing_waits_for_it():
    a = assembler()
    message(a, A, T0_MS, NOW0)
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + WAIT)] == [(A, "decision_wait")]
    assert a.progress.mark(0) == REACHED


def test_revoked_partitions_forget_their_group_read_time():
    a = assembler()
    a.set_group_read_times({0: 5, 1: 7})
    a.revoke([1])
    assert (a.progress.mark(0), a.progress.mark(1)) == (5, UNKNOWN)


# ---------------------------------------------------------------- the exchange


def test_each_partition_waits_for_the_lowest_read_time_of_the_others():
    assert rt.group_floors({0: 50, 1: 30, 2: 90}, 3) == {0: 30, 1: 50, 2: 30}
    assert rt.group_floors({0: 50, 1: -1}, 3) == {0: -1, 1: -1, 2: -1}  # partition 2: none committed
    assert rt.group_floors({0: 50}, 1) == {0: rt.NO_WAIT_MS}  # one partition: nothing is re-keyed


def test_only_the_partitions_waited_for_count():
    """auto: partitions whose readers re-key; the others hold no copy for anyone (partition 1,
    read far behind at 30, holds nothing up)."""
    times = {0: 50, 1: 30, 2: 90, 3: -1}
    assert rt.group_floors(times, 4, {0, 2}) == {0: 90, 1: 50, 2: 50, 3: 50}
    assert rt.group_floors(times, 4, {2}) == {0: 90, 1: 90, 2: rt.NO_WAIT_MS, 3: 90}
    assert rt.group_floors(times, 4, set()) == dict.fromkeys(range(4), rt.NO_WAIT_MS)


def test_rekeying_partitions_come_from_the_committed_checkpoints():
    committed = [
        TopicPartition("in", 0, 10, metadata=Checkpoint(9, 100, 1_234, 5_000).encode()),
        TopicPartition("in", 1, 10, metadata=Checkpoint(9, 100, 1_234, 4_999).encode()),  # too long ago
        TopicPartition("in", 2, 10, metadata=Checkpoint(9, 100, 1_234).encode()),  # never re-keyed
        TopicPartition("in", 3, -1001),
        TopicPartition("other", 4, 10, metadata=Checkpoint(9, 100, 5, 9_000).encode()),
    ]
    assert rt.rekeying(committed, "in", since_ms=5_000) == {0}


def test_read_times_come_from_the_committed_checkpoints():
    committed = [
        TopicPartition("in", 0, 10, metadata=Checkpoint(9, 100, 1_234).encode()),
        TopicPartition("in", 1, 10, metadata=Checkpoint(9, 100).encode()),  # published no read time
        TopicPartition("in", 2, -1001),  # never committed
        TopicPartition("other", 0, 10, metadata=Checkpoint(9, 100, 5).encode()),
    ]
    assert rt.read_times(committed, "in") == {0: 1_234, 1: -1, 2: -1}


def test_a_checkpoint_without_a_read_time_decodes_as_unknown():
    assert Checkpoint.decode('{"v":1,"through":4,"since_ms":7}') == Checkpoint(4, 7, -1, -1)
    assert Checkpoint.decode(Checkpoint(4, 7, 9).encode()) == Checkpoint(4, 7, 9)
    assert Checkpoint.decode(Checkpoint(4, 7, 9, 11).encode()) == Checkpoint(4, 7, 9, 11)


class FakeSnapshots:
    """Answers each snapshot (``GroupSnapshots.fetch``) with a future the test completes."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[int], Future]] = []

    def fetch(self, owned, timeout_s):  # noqa: ANN001
        assert not self.asked or self.asked[-1][1].done()  # one at a time
        f: Future = Future()
        self.asked.append((owned, f))
        return f

    def answer(self, times: dict[int, int], ends: dict[int, int], rekeyed: dict[int, int] | None = None) -> None:
        """The last snapshot: the committed checkpoints' read times (and when their partitions
        last re-keyed) and the end offsets of the partitions asked for."""
        owned, f = self.asked[-1]
        assert sorted(ends) == owned
        f.set_result((committed(times, rekeyed), ends))


def read_times_with(snapshots: FakeSnapshots, config, clock=None) -> rt.GroupReadTimes:  # noqa: ANN001
    kw = {"clock": clock} if clock else {}
    return rt.GroupReadTimes(config, "in", 2, snapshots=snapshots, **kw)


def committed(times: dict[int, int], rekeyed: dict[int, int] | None = None) -> list[TopicPartition]:
    """What ``Consumer.committed()`` answers: each partition's offset and checkpoint."""
    rekeyed = rekeyed or {}
    return [
        TopicPartition("in", p, 1, metadata=Checkpoint(0, 0, t, rekeyed.get(p, -1)).encode()) for p, t in times.items()
    ]


def test_a_snapshot_counts_once_its_copies_are_read():
    """The group's read times are only in force on a partition once this worker has read it up to
    the end offset taken after them: the copies those commits wrote are then in their buffers."""
    snaps = FakeSnapshots()
    g = read_times_with(snaps, make_job(assemble={"group_read_time": True}).config)
    assert g.update({0}, {0: 0}, 1.0) == {0: rt.UNKNOWN_NS}  # asks for a snapshot
    snaps.answer({0: 100, 1: 200}, {0: 40})
    assert g.update({0}, {0: 39}, 1.0) == {0: rt.UNKNOWN_NS}  # not read to offset 40 yet
    assert g.update({0}, {0: 40}, 1.0) == {0: 200 * MS}  # partition 1's read time, for partition 0
    assert len(snaps.asked) == 1  # not before the refresh period
    g.update({0}, {0: 40}, 1.0 + rt.REFRESH_S)
    assert len(snaps.asked) == 2
    g.forget([0])  # rewound: read anew
    assert g.update({0}, {0: 40}, 1.0 + rt.REFRESH_S) == {0: rt.UNKNOWN_NS}


WALL_S = 1_800_000_000.0  # the worker's wall clock in the auto-mode tests (s)


def test_auto_keyed_input_waits_for_nothing():
    """``group_read_time: auto`` (the default) on input keyed by trace ID — no checkpoint says its
    partition re-keys: the snapshot lets every trace go at once, without reading to the end offset.
    Before (``true``, or auto before this change): the floor was partition 1's read time, in force only
    once partition 0 was read to offset 40 — in `make bench`'s drain that held every decision to
    the slowest partition (exactly_once p99 1.90 → 4.92 s; 27 s at 20K traces)."""
    snaps = FakeSnapshots()
    g = read_times_with(snaps, make_job().config, clock=lambda: WALL_S)
    g.update({0}, {0: 0}, 1.0)
    snaps.answer({0: 100, 1: 200}, {0: 40})
    assert g.update({0}, {0: 0}, 1.0) == {0: REACHED}


def test_auto_waits_for_a_partition_whose_reader_rekeys():
    """Partition 1's checkpoint says its reader re-keyed a message a minute ago: partition 0 waits
    for its read time as it always did (the copies may be on their way); once that is an hour old,
    it no longer does."""
    snaps = FakeSnapshots()
    now = [WALL_S]
    g = read_times_with(snaps, make_job().config, clock=lambda: now[0])
    rekeyed_ms = int(WALL_S * 1000) - 60_000
    g.update({0}, {0: 0}, 1.0)
    snaps.answer({0: 100, 1: 200}, {0: 40}, {1: rekeyed_ms})
    assert g.update({0}, {0: 39}, 1.0) == {0: rt.UNKNOWN_NS}  # the copies: not read to offset 40 yet
    assert g.update({0}, {0: 40}, 1.0) == {0: 200 * MS}
    now[0] += rt.REKEY_MEMORY_MS / 1000
    g.update({0}, {0: 40}, 2.0)
    snaps.answer({0: 100, 1: 300}, {0: 50}, {1: rekeyed_ms})
    assert g.update({0}, {0: 40}, 2.0) == {0: REACHED}


def test_auto_waits_at_once_for_a_partition_this_worker_rekeyed():
    """No committed checkpoint says partition 1 re-keys, so partition 0 waits for nothing; then this
    worker re-keys a message read from partition 1 (its copy goes to partition 0, unwritten until
    the next commit): partition 0 waits for partition 1's read time at once — before, only once a
    snapshot taken after that commit (every 250 ms) said partition 1 re-keys, so a trace due in
    between was decided before its copy arrived (``test_rekeyed_read_time.py`` ran ``true`` for it)."""
    snaps = FakeSnapshots()
    g = read_times_with(snaps, make_job().config, clock=lambda: WALL_S)
    g.update({0}, {0: 0}, 1.0)
    snaps.answer({0: 100, 1: 200}, {0: 40})
    assert g.update({0}, {0: 0}, 1.0) == {0: REACHED}
    assert g.update({0}, {0: 0}, 1.0, rekeying={1}) == {0: 200 * MS}  # no new snapshot needed
    assert g.update({0}, {0: 0}, 1.0, rekeying={0}) == {0: REACHED}  # its own partition: the local guard's
    # the next snapshot waits for partition 1 as well (its checkpoint may not say so yet), once read to
    g.update({0}, {0: 0}, 2.0, rekeying={1})
    snaps.answer({0: 100, 1: 300}, {0: 50})
    assert g.update({0}, {0: 49}, 2.0, rekeying={1}) == {0: 200 * MS}
    assert g.update({0}, {0: 50}, 2.0, rekeying={1}) == {0: 300 * MS}


def test_a_partition_rekeyed_without_a_committed_read_time_holds():
    snaps = FakeSnapshots()
    g = read_times_with(snaps, make_job().config, clock=lambda: WALL_S)
    g.update({0}, {0: 0}, 1.0)
    snaps.answer({0: 100}, {0: 40})  # nothing committed on partition 1 yet
    assert g.update({0}, {0: 0}, 1.0) == {0: REACHED}
    assert g.update({0}, {0: 0}, 1.0, rekeying={1}) == {0: rt.UNKNOWN_NS}


def test_true_waits_for_every_partition_already():
    snaps = FakeSnapshots()
    g = read_times_with(snaps, make_job(assemble={"group_read_time": True}).config)
    g.update({0}, {0: 0}, 1.0)
    snaps.answer({0: 100, 1: 200}, {0: 0})
    assert g.update({0}, {0: 0}, 1.0, rekeying={1}) == g.update({0}, {0: 0}, 1.0) == {0: 200 * MS}


def test_a_failed_snapshot_keeps_what_is_in_force():
    snaps = FakeSnapshots()
    g = read_times_with(snaps, make_job(assemble={"group_read_time": True}).config)
    g.update({0}, {0: 0}, 1.0)
    snaps.answer({0: 100, 1: 200}, {0: 0})
    assert g.update({0}, {0: 0}, 1.0) == {0: 200 * MS}
    g.update({0}, {0: 0}, 2.0)
    snaps.asked[-1][1].set_exception(RuntimeError("broker away"))
    assert g.update({0}, {0: 0}, 2.0) == {0: 200 * MS}
    g.update({0}, {0: 0}, 3.0)
    assert len(snaps.asked) == 3  # asked again a period later


# ---------------------------------------------------------------- what a worker commits


class Consumer:
    def __init__(self) -> None:
        self.pos = {0: 10, 1: 5, 2: -1001}
        self.ends = {0: 10, 1: 9, 2: 0}

    def position(self, tps):  # noqa: ANN001
        return [TopicPartition(tp.topic, tp.partition, self.pos[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp, cached):  # noqa: ANN001
        return (0, self.ends[tp.partition])


def test_a_worker_commits_each_partitions_read_time(monkeypatch):
    """Read to the end (partition 0; partition 2, empty and never read): its clock less the margin;
    behind (partition 1): how far it is read in Kafka time; never lower than before."""
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: Consumer())
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: None)
    job = make_job(assemble={"group_read_time": True})
    w = worker_mod.Worker(job.config, job)
    job.input_partitions = 3
    w.assigned = {0, 1, 2}
    for _ in range(9):  # one block of partition 1's messages: its read time is their median
        job.assembler.read(1, T0_MS, NOW0)
    now_ms = NOW0 // MS

    def published() -> dict[int, int]:
        """What the next commit carries per partition; committed (as _flush does when it succeeds)."""
        offsets = w._commit_offsets(now_ms)
        for tp in offsets:
            w.committed[tp.partition] = (tp.offset, w.through.get(tp.partition, -1))
        return {tp.partition: Checkpoint.decode(tp.metadata).read_ms for tp in offsets}

    assert published() == {0: now_ms - rt.CAUGHT_UP_MARGIN_MS, 1: T0_MS, 2: now_ms - rt.CAUGHT_UP_MARGIN_MS}
    assert published() == {}  # unchanged: nothing to commit again
    w.read_ms[1] = T0_MS + 7  # committed before (by this worker or the partition's last owner)
    now_ms += worker_mod.READ_MS_STEP
    assert published() == {0: now_ms - rt.CAUGHT_UP_MARGIN_MS, 2: now_ms - rt.CAUGHT_UP_MARGIN_MS}
    w.committed[1] = (0, -1)  # its offset moved: committed again, its read time never lower than before
    assert published() == {1: T0_MS + 7}


def test_a_worker_commits_when_its_partitions_last_rekeyed(monkeypatch):
    """The checkpoint says when a message read from the partition was last re-keyed — by this
    worker, or as the partition's last owner committed it — and is committed again when that moved
    by ``REKEYED_MS_STEP`` (the group counts a partition as re-keying for an hour after)."""
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: Consumer())
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: None)
    job = make_job()  # auto
    w = worker_mod.Worker(job.config, job)
    job.input_partitions = 3
    w.assigned = {0, 1, 2}
    w.rekeyed_ms[2] = 1_000  # restored: the partition's last owner re-keyed then
    job.rekeyed_ns[1] = NOW0
    now_ms = NOW0 // MS

    def published() -> dict[int, int]:
        offsets = w._commit_offsets(now_ms)
        for tp in offsets:
            w.committed[tp.partition] = (tp.offset, w.through.get(tp.partition, -1))
        return {tp.partition: Checkpoint.decode(tp.metadata).rekeyed_ms for tp in offsets}

    assert published() == {0: -1, 1: now_ms, 2: 1_000}
    job.rekeyed_ns[1] = NOW0 + (worker_mod.REKEYED_MS_STEP - 1) * MS
    assert published() == {}  # moved by less than a step
    job.rekeyed_ns[1] = NOW0 + worker_mod.REKEYED_MS_STEP * MS
    assert published() == {1: now_ms + worker_mod.REKEYED_MS_STEP}


def test_a_worker_hands_the_partitions_it_rekeyed_to_the_exchange(monkeypatch):
    """In auto mode the exchange is told at every step which owned partitions this worker re-keyed
    from in the last hour — by itself (``Job.rekeyed_ns``) or, as restored, their last owner."""
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: Consumer())
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: None)
    job = make_job()
    w = worker_mod.Worker(job.config, job)
    w.assigned = {0, 1, 2}
    now_ns = time.time_ns()
    job.rekeyed_ns[1] = now_ns
    job.rekeyed_ns[0] = now_ns - (rt.REKEY_MEMORY_MS + 1_000) * MS  # over an hour ago
    w.rekeyed_ms[2] = now_ns // MS - 60_000  # restored from its checkpoint
    assert sorted(w._rekeying()) == [1, 2]
    job = make_job(assemble={"group_read_time": True})  # every partition waited for already
    w = worker_mod.Worker(job.config, job)
    w.assigned = {1}
    job.rekeyed_ns[1] = now_ns
    assert w._rekeying() == []


def test_the_job_notes_which_partitions_rekey():
    """A message off its trace's partition (keyed by something else) is re-keyed: its partition is
    noted with the time; one in place is not."""
    from tests.spans import span
    from tests.support.jobs import received

    job = make_job()
    trace = b"\x01" * 16

    def msg(offset: int, partition: int, key: bytes):
        return received(offset, trace, "a", [span(start=NOW0 - MS, end=NOW0, parent=None)], partition, key)

    job.ingest([msg(0, 1, b"other")], NOW0)
    job.ingest([msg(1, 2, b"another"), msg(0, 0, trace)], NOW0 + 5)  # partition count unknown: 0 is in place
    assert job.rekeyed_ns == {1: NOW0, 2: NOW0 + 5}
    assert len(job.assembler) == 1  # the one in place is buffered


def test_auto_does_not_wait_where_nothing_can_be_rekeyed(monkeypatch):
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: Consumer())
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: None)
    for sections, waits in (
        ({}, True),  # auto, re-keying on: partitions that re-key are waited for
        ({"ingest": {"rekey": False}}, False),
        ({"ingest": {"rekey": False}, "assemble": {"group_read_time": True}}, True),
        ({"assemble": {"group_read_time": False}}, False),
    ):
        job = make_job(**sections)
        job.input_partitions = 3
        assert worker_mod.Worker(job.config, job)._waits_for_group() is waits, sections


def test_without_group_read_time_a_worker_publishes_and_waits_for_nothing(monkeypatch):
    """``assemble.group_read_time: false``: no read time in the checkpoints, no exchange made."""
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: Consumer())
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: None)
    job = make_job(assemble={"group_read_time": False})
    w = worker_mod.Worker(job.config, job)
    job.input_partitions = 3
    w.assigned = {0, 1, 2}
    assert not w._waits_for_group()
    w._behind()
    assert w.group_read_times is None
    assert all(Checkpoint.decode(tp.metadata).read_ms == -1 for tp in w._commit_offsets(NOW0 // MS))
