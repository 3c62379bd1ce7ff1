"""The worker loop's open transaction (issue 11, decision latency), with librdkafka's consumer and
producer replaced by fakes that record every call, a clock the test moves, and the real
``OutputProducer`` and job core between them.

Before: the loop decided traces only in ``_flush``, once per commit interval — every trace due
since the last flush was decided, built and produced there, in one burst, and only then was the
transaction begun, filled and committed; a trace due just after a flush waited a whole interval
before any of its work was done, and under a drain the flush took seconds (bench: decision latency
p50 / p99 1.3 / 4.7 s at a 1 s commit interval). Now every step decides what is due and produces it
into the transaction that stays open for the interval; ``_flush`` adds the SLI partials and the
offsets and commits. What stays as it was: nothing counts as written (no hold released, no offset
moved) before the commit, and a failure anywhere aborts the whole open transaction and rewinds."""

from __future__ import annotations

import os

import pytest

from pipeline import metrics
from pipeline.kafka import producer as producer_mod
from pipeline.kafka import worker as worker_mod
from tests.spans import span
from tests.support.jobs import MS, S, make_config, make_job
from tests.support.jobs import received as msg

T0 = 1_700_000_000 * S  # the fake clock's start (ns); span times sit just before it
TOPIC = "spans.raw"


class Clock:
    """``time`` as the worker module sees it: moved by the test (and by consume()'s wait)."""

    def __init__(self) -> None:
        self.ns = T0

    def time_ns(self) -> int:
        return self.ns

    def time(self) -> float:
        return self.ns / 1e9

    def monotonic(self) -> float:
        return self.ns / 1e9

    perf_counter = monotonic

    def sleep(self, s: float) -> None:
        self.ns += int(s * 1e9)

    def at(self, seconds: float) -> None:
        self.ns = T0 + int(seconds * S)


class Message:
    def __init__(self, received) -> None:  # noqa: ANN001 - a tests.support Received
        self.r = received

    def error(self):
        return None

    def partition(self) -> int:
        return self.r.partition

    def offset(self) -> int:
        return self.r.offset

    def key(self) -> bytes | None:
        return self.r.key

    def value(self) -> bytes | None:
        return self.r.value

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)  # TIMESTAMP_NOT_AVAILABLE: the job uses its own clock


class FakeConsumer:
    """Hands out queued messages one batch per consume(); keeps the read position per partition."""

    def __init__(self) -> None:
        self.queue: list[list[Message]] = []
        self.read: dict[int, int] = {}  # partition → next offset
        self.seeks: list[tuple[int, int]] = []
        self.commits: list[list] = []
        self.during_consume = None  # a rebalance callback librdkafka would run inside consume()
        self.group: dict = {}  # partition → committed TopicPartition (offset, metadata): the broker's

    def consume(self, n: int, timeout: float) -> list[Message]:
        if self.during_consume is not None:
            callback, self.during_consume = self.during_consume, None
            callback()
        batch = self.queue.pop(0) if self.queue else []
        for m in batch:
            self.read[m.partition()] = m.offset() + 1
        return batch

    def position(self, tps):  # noqa: ANN001
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, self.read.get(tp.partition, -1001)) for tp in tps]

    def get_watermark_offsets(self, tp, cached=False, timeout=None):  # noqa: ANN001
        return 0, self.read.get(tp.partition, 0)

    def committed(self, tps, timeout=None):  # noqa: ANN001
        from confluent_kafka import TopicPartition

        return [self.group.get(tp.partition, TopicPartition(tp.topic, tp.partition, -1001)) for tp in tps]

    def seek(self, tp) -> None:  # noqa: ANN001
        self.seeks.append((tp.partition, tp.offset))
        self.read[tp.partition] = tp.offset

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def commit(self, offsets, asynchronous=True):  # noqa: ANN001
        self.commits.append(offsets)
        self.group.update((tp.partition, tp) for tp in offsets)

    def pause(self, tps) -> None:  # noqa: ANN001
        pass

    def resume(self, tps) -> None:  # noqa: ANN001
        pass


class FakeProducer:
    """confluent_kafka.Producer as far as OutputProducer uses it: a log of calls, transactions as
    lists of (topic, key) of the records produced into them."""

    def __init__(self, conf: dict) -> None:
        self.calls: list[str] = []
        self.open: list | None = None
        self.committed: list[tuple[list, list]] = []  # (records, offsets) per committed transaction
        self.aborted: list[list] = []
        self.offsets: list = []
        self.queued: list = []  # at_least_once: produced, not yet flushed
        self.group: dict = {}  # the consumer group's committed offsets (shared with FakeConsumer)
        self._sent: list = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        assert self.open is None, "a transaction is open already"
        self.calls.append("begin")
        self.open, self.offsets = [], []

    def produce(self, topic, value, key, partition=None, on_delivery=None) -> None:  # noqa: ANN001
        self.calls.append(f"produce {topic}")
        (self.open if self.open is not None else self.queued).append((topic, key))

    def poll(self, timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets, group_metadata, timeout) -> None:  # noqa: ANN001
        assert self.open is not None and group_metadata == "group-metadata"
        self.offsets = [(tp.partition, tp.offset) for tp in offsets]
        self._sent = offsets

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        self.committed.append((self.open, self.offsets))
        self.group.update((tp.partition, tp) for tp in self._sent)
        self.open, self._sent = None, []

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        self.aborted.append(self.open)
        self.open, self._sent = None, []

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        self.queued = []
        return 0


A, B = os.urandom(16), os.urandom(16)


def trace_message(offset: int, trace_id: bytes, partition: int = 0) -> Message:
    t = T0 - 10 * S
    return Message(msg(offset, trace_id, "front", [span(t, t + 5 * MS, parent=None)], partition=partition))


def make_worker(monkeypatch, guarantee: str = "exactly_once", faults: str = "") -> worker_mod.Worker:
    clock = Clock()
    monkeypatch.setattr(worker_mod, "time", clock)
    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: FakeConsumer())
    monkeypatch.setattr(producer_mod, "Producer", FakeProducer)
    monkeypatch.setenv("TAILSIFT_INJECT_FAULTS", faults)
    monkeypatch.setattr(worker_mod, "read_decisions", lambda config, since, stopping=None: {})
    sections = {
        "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0},
        "job": {"processing_guarantee": guarantee, "commit_interval_ms": 1000, "tick_ms": 1000},
        "sampling": {"policies": [{"name": "all", "type": "always_sample"}]},
    }
    w = worker_mod.Worker(make_config(**sections), make_job(**sections))
    w.clock = clock
    w.producer._producer.group = w.consumer.group
    w._on_assign(w.consumer, [worker_mod.TopicPartition(TOPIC, 0)])
    return w


def step_at(w: worker_mod.Worker, seconds: float, *messages: Message) -> None:
    w.clock.at(seconds)
    w.consumer.queue.append(list(messages))
    w._step()


def topics(records) -> list[str]:  # noqa: ANN001
    return sorted(topic for topic, _ in records)


def test_a_trace_due_mid_interval_is_produced_at_once_into_the_open_transaction(monkeypatch):
    """A trace due at 1.15 s (read at 0.15 s, 1 s decision wait) is decided and its records
    produced at the step that finds it due — not at the next commit (2 s), which before was the
    first moment anything of it was built. Its offset still moves only with that commit."""
    w = make_worker(monkeypatch)
    p, tracker = w.producer._producer, w.job.tracker
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)  # the interval's commit: A is buffered, nothing of it written but its SLI partial
    assert p.committed[-1] == ([("sli.windows", b"front")], [(0, 0)])  # the watermark stays at A's message
    step_at(w, 1.2)  # A is due: decided and produced now
    assert topics(p.open) == ["traces.decisions", "traces.kept"]
    assert tracker.heads()[0].offset == 0  # counted as written only when the transaction commits
    assert [c for c in p.calls if c in ("commit", "abort")] == ["commit"]
    step_at(w, 1.5)
    assert topics(p.open) == ["traces.decisions", "traces.kept"]  # still open: nothing more due
    step_at(w, 2.0)
    records, offsets = p.committed[-1]
    assert topics(records) == ["traces.decisions", "traces.kept"]  # produced at 1.2 s, committed now
    assert offsets == [(0, 1)]
    assert p.open is None and not tracker.heads()


def test_the_decision_latency_is_observed_at_the_commit(monkeypatch):
    w = make_worker(monkeypatch)
    before = metrics.DECISION_LATENCY._sum.get()
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)
    step_at(w, 1.2)  # due at 1.15 s, produced at 1.2 s
    assert metrics.DECISION_LATENCY._sum.get() == before  # not written yet
    step_at(w, 2.0)  # committed at 2 s
    assert metrics.DECISION_LATENCY._sum.get() - before == pytest.approx(0.85)


@pytest.mark.parametrize("fault", ["step:1", "begin:2", "produce:2", "offsets:2", "commit:2"])
def test_a_failure_anywhere_aborts_the_open_transaction_and_rewinds(monkeypatch, fault):
    """Faults after the records of a step went into the open transaction (``step``), at its
    begin, after the commit's own records, after the offsets and before the commit: the whole
    open transaction — A's records produced at an earlier step included — is aborted, the input
    is read again from the committed offset, and the replay writes A exactly once."""
    w = make_worker(monkeypatch, faults=fault)
    p = w.producer._producer
    rewinds = metrics.REWINDS._value.get()
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)  # first transaction: the watermark only
    step_at(w, 1.2)  # A due: into the open transaction (fails here with step:1)
    step_at(w, 2.0)  # the commit (fails at begin:2, produce:2, offsets:2, commit:2)
    assert metrics.REWINDS._value.get() - rewinds == 1
    assert len(p.aborted) == 1 and len(p.committed) == 1
    if fault != "begin:2":
        assert "traces.kept" in topics(p.aborted[0])  # A's records were in what was aborted
    assert w.consumer.seeks == [(0, 0)]  # back to the committed offset: A's message
    assert w.job.tracker.heads() == {} and len(w.job.assembler) == 0  # everything uncommitted dropped
    # the replay: A read again, decided, written once with its offset
    step_at(w, 2.5, trace_message(0, A))
    step_at(w, 3.6)
    step_at(w, 4.0)
    records, offsets = p.committed[-1]
    assert topics(records) == ["traces.decisions", "traces.kept"]  # its SLI partial was committed at 1 s
    assert offsets == [(0, 1)]
    kept = [key for rs, _ in p.committed for topic, key in rs if topic == "traces.kept"]
    assert kept == [A]


def test_partitions_lost_mid_interval_abort_the_open_transaction_before_the_rewind(monkeypatch):
    """The group took the partitions away (session timeout) while A's records sat in the open
    transaction: they must not be committed by anything that follows — the transaction is aborted,
    then the worker rewinds."""
    w = make_worker(monkeypatch)
    p = w.producer._producer
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)
    step_at(w, 1.2)
    assert "traces.kept" in topics(p.open)
    w.consumer.during_consume = lambda: w._on_lost(w.consumer, [worker_mod.TopicPartition(TOPIC, 0)])
    step_at(w, 1.3)
    assert p.calls[-1] == "abort" and "traces.kept" in topics(p.aborted[0])
    assert len(p.committed) == 1 and not w.open_records


def test_a_revoke_mid_interval_commits_the_open_transaction_first(monkeypatch):
    """Partitions revoked (cooperative rebalance) while records are in the open transaction: they
    commit with the offsets while the partitions are still this worker's."""
    w = make_worker(monkeypatch)
    p = w.producer._producer
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)
    step_at(w, 1.2)
    w.consumer.during_consume = lambda: w._on_revoke(w.consumer, [worker_mod.TopicPartition(TOPIC, 0)])
    step_at(w, 1.3)
    records, offsets = p.committed[-1]
    assert "traces.kept" in topics(records) and offsets == [(0, 1)]
    assert not p.aborted and p.open is None


def test_an_assignment_mid_interval_commits_the_open_transaction_before_its_restore(monkeypatch):
    """Partitions assigned (a worker left the group) while A's records are in the open transaction:
    the restore of the new partitions may wait tens of seconds for the departed worker's
    transaction (open on their decision log, it holds the restore's read_committed reader below
    the end until the broker times it out), so the open one is
    committed first. Before: it stayed open across that wait, the coordinator timed it out, and
    the next commit was fenced — CI: the survivor of
    test_a_worker_leaves_a_two_worker_group_mid_stream[kill] stalled ~21 s, then exited 3."""
    w = make_worker(monkeypatch)
    p = w.producer._producer
    seen: dict = {}

    def read_decisions(config, since, stopping=None):  # noqa: ANN001 - the restore of partition 1
        seen["open"] = p.open is not None
        seen["committed"] = list(p.committed)
        return {}

    monkeypatch.setattr(worker_mod, "read_decisions", read_decisions)
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)
    step_at(w, 1.2)
    assert "traces.kept" in topics(p.open)
    w.consumer.during_consume = lambda: w._on_assign(w.consumer, [worker_mod.TopicPartition(TOPIC, 1)])
    step_at(w, 1.3)
    assert seen["open"] is False
    records, offsets = seen["committed"][-1]
    assert "traces.kept" in topics(records) and offsets == [(0, 1)]
    assert w.assigned == {0, 1} and not p.aborted


def test_at_least_once_writes_as_it_decides_and_commits_offsets_after_the_acknowledgements(monkeypatch):
    w = make_worker(monkeypatch, guarantee="at_least_once")
    p, c = w.producer._producer, w.consumer
    step_at(w, 0.15, trace_message(0, A))
    step_at(w, 1.0)
    step_at(w, 1.2)
    assert topics(p.queued) == ["traces.decisions", "traces.kept"] and p.calls[-1] == "produce traces.kept"
    assert c.commits[-1][0].offset == 0
    step_at(w, 2.0)
    assert p.calls[-1] == "flush" and not p.queued
    assert [(tp.partition, tp.offset) for tp in c.commits[-1]] == [(0, 1)]
    assert "begin" not in p.calls


def test_under_a_backlog_a_slow_step_makes_the_next_batch_smaller_and_quick_steps_let_it_grow_back(monkeypatch):
    """With ``job.step_budget_ms`` (50 ms here), while consume() returns all it is asked for (a
    backlog), the batch follows the budget at the per-message cost of recent steps; caught up, it is
    ``job.batch_max_messages`` again. Before (and with the budget 0, the default), every ``consume()`` asked for
    ``batch_max_messages`` (500) whatever a step took: under a drain on the loaded bench machine
    steps of 0.1–1.6 s, and every trace due meanwhile and a commit whose interval ran out waited for
    the step to end (make bench: decision latency p99 4.2–4.9 s at a 500 ms interval)."""
    w = make_worker(monkeypatch)
    w.batch_max = w.batch = 20  # job.batch_max_messages
    w.step_budget = 0.05  # job.step_budget_ms
    asked: list[int] = []
    consume, ingest = w.consumer.consume, w.job.ingest
    offset = iter(range(1_000))

    def recording_consume(n: int, timeout: float):
        asked.append(n)
        return consume(n, timeout)

    def slow_ingest(batch, now_ns):  # noqa: ANN001 - 10 ms of the worker's clock per message
        w.clock.sleep(0.01 * len(batch))
        return ingest(batch, now_ns)

    def backlog_step(at: float, messages: int) -> None:
        step_at(w, at, *[trace_message(next(offset), os.urandom(16)) for _ in range(messages)])

    w.consumer.consume, w.job.ingest = recording_consume, slow_ingest
    backlog_step(0.1, w.batch)  # 200 ms for a whole batch of 20
    backlog_step(0.4, w.batch)
    assert asked == [20, 5] and w.batch == 5  # 50 ms at 10 ms per message
    w.job.ingest = ingest  # from here a step takes no time on the worker's clock
    while w.batch < 20 and len(asked) < 30:
        backlog_step(0.5 + len(asked) / 100, w.batch)
    assert asked[2:4] == [5, 7]  # the cost decays by a quarter per quick step
    assert asked == sorted(asked[:2], reverse=True) + sorted(asked[2:]) and w.batch == 20
    w.job.ingest = slow_ingest
    backlog_step(0.9, w.batch)  # one slow step again: smaller, smoothed
    shrunk = w.batch
    assert 5 < shrunk < 20
    backlog_step(1.1, 2)  # caught up (2 of those asked for): the whole batch again at once
    assert asked[-2:] == [20, shrunk] and w.batch == 20
