"""Processing-time decision points that wait for a partition read behind real time (issue 13: the
full chaos profile lost 143 of 2,684 error traces, decided — and dropped — on the worker clock
while their error spans sat unread a few offsets further on in a backlog).

The assembler is driven as the job drives it: ``read`` for every message (its Kafka timestamp),
``add`` with the stamp ``read`` returned, ``set_behind`` with what the data plane saw at its last
look, ``due`` on the worker clock."""

from __future__ import annotations

import os

from confluent_kafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.assemble import TraceAssembler
from operators.read_progress import BLOCK, ReadProgress
from pipeline.codecs import avro
from pipeline.kafka import worker as worker_mod
from tests.spans import span
from tests.support.jobs import make_job, received, records

MS = 1_000_000
S = 1_000_000_000
WAIT = 1 * S
T0_MS = 1_700_000_000_000  # the backlog's message time (ms): long before the worker clock below
NOW0 = T0_MS * MS + 3_600 * S  # the worker reads it an hour later
SKEW = 300 * S
A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


def assembler(factor: float = 10, **kw) -> TraceAssembler:
    return TraceAssembler(decision_wait_ns=WAIT, max_wait_ns=int(factor * WAIT), max_clock_skew_ns=SKEW, **kw)


def message(a: TraceAssembler, trace: bytes, ts_ms: int, now_ns: int, unit: object = None, partition: int = 0, **kw):
    """One message of ``trace`` read at worker time ``now_ns`` with Kafka timestamp ``ts_ms``."""
    stamp = a.read(partition, ts_ms, now_ns)
    return a.add(trace, partition, [span(**kw)], unit, now_ns, 10, stamp)


def filler(a: TraceAssembler, ts_ms: int, now_ns: int, n: int = BLOCK, partition: int = 0) -> None:
    """``n`` messages of other traffic (other services' spans, dead letters: anything read)."""
    for _ in range(n):
        a.read(partition, ts_ms, now_ns)


def test_backlog_error_span_read_two_waits_later_is_decided_with_its_trace():
    """The trace's first message is read at t, its error span (produced half a wait after it) many
    offsets later at t + 2 × wait. Before: decided at t + wait on the worker clock without the
    error span — which then followed that decision as a late span (the chaos figure: error traces
    decided drop). Now it is held until its partition is read a wait past its first message."""
    for guarded in (False, True):
        a = assembler(10 if guarded else 1)  # factor 1: the worker clock alone (the old behaviour)
        a.set_behind([0])
        message(a, A, T0_MS, NOW0, "first", parent=None)
        filler(a, T0_MS + 100, NOW0 + WAIT // 2)
        released = a.due(NOW0 + WAIT)
        if not guarded:
            assert [(b.trace_id, b.messages) for b in released] == [(A, ["first"])]  # the old miss
            continue
        assert released == [] and len(a) == 1
        filler(a, T0_MS + 200, NOW0 + 3 * WAIT // 2)
        assert a.due(NOW0 + 3 * WAIT // 2) == []
        message(a, A, T0_MS + 500, NOW0 + 2 * WAIT, "error", status="ERROR")  # produced 0.5 wait after the first
        assert a.due(NOW0 + 2 * WAIT) == []  # the partition has not been read a wait past A's first message yet
        filler(a, T0_MS + 1_000, NOW0 + 2 * WAIT)
        (buf,) = a.due(NOW0 + 2 * WAIT)
        assert buf.trace_id == A and buf.messages == ["first", "error"] and buf.span_count == 2
        assert buf.trigger == "backlog_read" and buf.forced_reason == ""
        assert a.buffered_spans == 0 and a.buffered_bytes == 0


def test_a_caught_up_partition_releases_its_held_traces_and_holds_nothing_new():
    a = assembler()
    a.set_behind([0, 1])
    message(a, A, T0_MS, NOW0, partition=0)
    message(a, B, T0_MS, NOW0, partition=1)
    assert a.due(NOW0 + WAIT) == []
    a.set_behind([1])  # partition 0 read to the end at the data plane's last look
    assert [b.trace_id for b in a.due(NOW0 + WAIT)] == [A]
    message(a, C, T0_MS + 5, NOW0 + WAIT, partition=0)
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + 2 * WAIT)] == [(C, "decision_wait")]
    assert len(a) == 1  # B: its partition is still behind


def test_a_backlog_read_ahead_of_the_clock_is_decided_by_partition_time():
    """Draining a backlog faster than it was written, the partition is read a wait past a trace's
    first message long before the trace's clock wait is over. Before: held to the clock deadline
    — a whole wait's reading then fell due at once and was decided in a burst, late (make bench:
    a 1.3 s collect of 4,466 traces, decision latency p99 2.4 s at a 0.5 s commit interval). Now
    it goes as the read passes, in reading order (trigger ``backlog_read``)."""
    a = assembler()
    a.set_behind([0])
    message(a, A, T0_MS, NOW0, "a")
    message(a, B, T0_MS + 400, NOW0 + 10 * MS, "b")
    filler(a, T0_MS + 1_000, NOW0 + 20 * MS)  # a block a wait past A's first message, 20 ms later
    assert [(b.trace_id, b.trigger, b.messages) for b in a.due(NOW0 + 20 * MS)] == [(A, "backlog_read", ["a"])]
    assert [b.trace_id for b in a.due(NOW0 + 30 * MS)] == []  # B's wait ends at T0 + 1.4 s of partition time
    filler(a, T0_MS + 1_400, NOW0 + 40 * MS)
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + 40 * MS)] == [(B, "backlog_read")]
    assert a.buffered_spans == 0 and len(a) == 0


def test_a_partition_read_near_the_clock_does_not_read_ahead():
    """A majority of far-future timestamps moves a partition's time up to the clock + max skew:
    that must not release its traces before their clock wait (a producer clock minutes fast would
    otherwise have every trace decided as soon as read). Read ahead only happens on a partition
    read at least a wait behind the clock; here the clock decides, as before."""
    a = assembler()
    a.set_behind([0])
    message(a, A, T0_MS, NOW0)
    filler(a, 2**62 // MS, NOW0, n=10 * BLOCK)  # nothing but future timestamps
    assert a.progress.time(0) == NOW0 + SKEW
    assert a.due(NOW0 + WAIT - 1) == [] and len(a) == 1
    assert [b.trace_id for b in a.due(NOW0 + WAIT)] == [A]  # its clock wait: read far enough by then


def test_a_caught_up_partition_reads_nothing_ahead():
    """Caught up, the clock decides: a trace first seen while its partition was behind is not
    released early once the partition is read to the end."""
    a = assembler()
    a.set_behind([0])
    message(a, A, T0_MS, NOW0)
    a.set_behind([])
    filler(a, T0_MS + 5_000, NOW0)
    assert a.due(NOW0 + WAIT - 1) == []
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + WAIT)] == [(A, "decision_wait")]


def test_never_told_behind_the_worker_clock_alone_decides():
    a = assembler()
    message(a, A, T0_MS, NOW0)
    assert a.due(NOW0 + WAIT - 1) == []
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + WAIT)] == [(A, "decision_wait")]


def test_the_hard_bound_holds_when_the_partition_never_moves():
    """A partition behind whose read time never reaches the trace (a stuck fetch, say): the trace
    is decided exactly ``backlog_wait_factor`` × wait after its first span arrived, forced."""
    a = assembler(factor=3)
    a.set_behind([0])
    message(a, A, T0_MS, NOW0)
    assert a.due(NOW0 + 3 * WAIT - 1) == [] and len(a) == 1
    (buf,) = a.due(NOW0 + 3 * WAIT)
    assert buf.trigger == buf.forced_reason == "backlog_limit"
    assert a.buffered_spans == 0


def test_a_far_future_timestamp_does_not_release_the_partitions_held_traces():
    """A producer clock far ahead (or a hostile CreateTime): one message cannot move the
    partition's read time (block median), and even a stream of them moves it no further than the
    worker clock + max clock skew."""
    a = assembler()
    a.set_behind([0])
    message(a, A, T0_MS, NOW0)
    filler(a, T0_MS, NOW0, n=BLOCK - 1)  # the rest of A's block
    for _ in range(3):  # 4 of every 9 messages far in the future
        filler(a, 2**62 // MS, NOW0, n=BLOCK // 2)
        filler(a, T0_MS + 10, NOW0, n=BLOCK - BLOCK // 2)
    assert a.progress.time(0) == (T0_MS + 10) * MS
    assert a.due(NOW0 + 2 * WAIT) == [] and len(a) == 1
    filler(a, 2**62 // MS, NOW0 + 2 * WAIT, n=10 * BLOCK)  # nothing but future timestamps
    assert a.progress.time(0) == NOW0 + 2 * WAIT + SKEW


def test_far_past_timestamps_do_not_stall_a_partition():
    """4 of every 9 messages claim time 0: the partition's time still follows the majority, and
    its held traces are released when it reaches them."""
    a = assembler()
    a.set_behind([0])
    message(a, A, T0_MS, NOW0)
    filler(a, T0_MS, NOW0, n=BLOCK - 1)  # the rest of A's block
    assert a.due(NOW0 + WAIT) == []
    for k in range(1, 4):
        filler(a, 0, NOW0 + WAIT, n=BLOCK // 2)
        filler(a, T0_MS + k * 600, NOW0 + WAIT, n=BLOCK - BLOCK // 2)
    assert a.progress.time(0) == (T0_MS + 1_800) * MS
    assert [b.trace_id for b in a.due(NOW0 + WAIT)] == [A]


def test_a_trace_with_a_hostile_first_timestamp_delays_only_itself():
    """First message far in the future: that trace alone waits (up to the hard bound); traces read
    after it on the same partition are released as their partition time comes. First message at
    time 0: its stamp is the partition's time when read, so it still waits a wait of reading."""
    a = assembler(factor=5)
    a.set_behind([0])
    filler(a, T0_MS, NOW0)  # a first block: the partition's time is known
    message(a, A, 2**62 // MS, NOW0)  # far future
    message(a, B, 0, NOW0)  # far past
    message(a, C, T0_MS, NOW0)
    assert a.due(NOW0 + WAIT) == []
    filler(a, T0_MS + 900, NOW0 + WAIT)
    assert a.due(NOW0 + WAIT) == []  # B was stamped at the partition's time, T0: not a wait yet
    filler(a, T0_MS + 1_000, NOW0 + WAIT)
    assert sorted(b.trace_id for b in a.due(NOW0 + WAIT)) == [B, C]
    assert a.due(NOW0 + 5 * WAIT - 1) == []
    (buf,) = a.due(NOW0 + 5 * WAIT)
    assert buf.trace_id == A and buf.forced_reason == "backlog_limit"


def test_root_quiet_waits_for_the_partition_too():
    """A root span read, then nothing of the trace for the quiet gap on the worker clock — but the
    partition is read far behind: no early decision until it is read a gap past the trace's last
    message; then root_quiet decides it."""
    a = assembler(root_quiet_gap_ns=WAIT // 4)
    a.set_behind([0])
    message(a, A, T0_MS, NOW0, parent=None)
    assert a.due(NOW0 + WAIT // 2) == [] and len(a) == 1
    message(a, A, T0_MS + 100, NOW0 + WAIT // 2, "async consumer")  # a queue hop: puts A back in the quiet index
    filler(a, T0_MS + 360, NOW0 + WAIT // 2)
    (buf,) = a.due(NOW0 + WAIT * 3 // 4)
    assert buf.trigger == "root_quiet" and buf.span_count == 2


def test_at_the_buffer_bound_held_traces_go_oldest_first_down_to_the_resume_mark():
    """Backpressure pauses the input at the bound: held traces would then wait for input that is
    no longer read, so they stop waiting (oldest first) until the buffer is under the resume mark."""
    a = assembler(backlog_yield_spans=10, resume_fraction=0.8)
    a.set_behind([0])
    for i in range(10):
        message(a, bytes([i]) * 16, T0_MS, NOW0 + i)
    out = a.due(NOW0 + WAIT + 9)
    assert [b.trace_id[0] for b in out] == [0, 1, 2]  # 10 → 7 spans (< 8)
    assert {b.trigger for b in out} == {"backlog_bound"} and {b.forced_reason for b in out} == {""}
    assert a.due(NOW0 + WAIT + 9) == [] and a.buffered_spans == 7


def test_a_yield_stopped_by_a_trace_in_its_clock_wait_goes_on_once_that_wait_is_over():
    """The overload stall (issue 13, make chaos: input paused ~65 s at a time, 905 backlog_limit
    decisions). At the bound the yield took the one held trace and stopped at the next, still in
    its clock wait: 9 spans buffered, under the bound (10) but over the resume mark (8), so the
    input stayed paused. Before: ``due`` yielded only while at the bound itself, so once those
    traces were held it returned nothing (observed ``[]``) and they waited for the hard bound
    (``backlog_limit``, forced) with the input paused. Now the yield goes on until the resume
    mark, none of it forced."""
    a = assembler(backlog_yield_spans=10, resume_fraction=0.8)
    a.set_behind([0])
    message(a, bytes([0]) * 16, T0_MS, NOW0)
    for i in range(1, 10):
        message(a, bytes([i]) * 16, T0_MS, NOW0 + WAIT // 2)
    assert [b.trace_id[0] for b in a.due(NOW0 + WAIT)] == [0]  # the rest still in its clock wait
    assert a.buffered_spans == 9  # the caller's input stays paused (not under 8)
    out = a.due(NOW0 + WAIT + WAIT // 2)
    assert [b.trace_id[0] for b in out] == [1, 2]  # 9 → 7 spans (< 8): the input resumes
    assert {b.trigger for b in out} == {"backlog_bound"} and {b.forced_reason for b in out} == {""}
    assert a.due(NOW0 + 2 * WAIT) == [] and a.buffered_spans == 7  # under the mark: the rest wait again


def test_a_buffer_that_left_the_bound_by_other_decisions_still_yields_until_the_resume_mark():
    """At the bound with nothing held yet (every trace in its clock wait), a decision of another
    kind (root_quiet, here on a partition read to the end) takes the buffer under the bound but not
    under the resume mark: the input stays paused. Before: the held traces then waited for the hard
    bound (observed: nothing released until ``backlog_limit``). Now they go at once (backlog_bound)."""
    a = assembler(backlog_yield_spans=10, resume_fraction=0.8, root_quiet_gap_ns=WAIT // 4)
    a.set_behind([0])
    message(a, A, T0_MS, NOW0, partition=1, parent=None)  # partition 1 is read to the end
    for i in range(1, 10):
        message(a, bytes([i]) * 16, T0_MS, NOW0 + WAIT // 8)
    assert a.due(NOW0 + WAIT // 8) == [] and a.buffered_spans == 10  # at the bound: input paused
    assert [(b.trace_id, b.trigger) for b in a.due(NOW0 + WAIT // 2)] == [(A, "root_quiet")]
    assert a.buffered_spans == 9
    out = a.due(NOW0 + WAIT + WAIT // 8)
    assert [b.trace_id[0] for b in out] == [1, 2] and {b.trigger for b in out} == {"backlog_bound"}
    assert {b.forced_reason for b in out} == {""}


def test_revoke_forgets_held_traces_and_the_partitions_read_time():
    a = assembler()
    a.set_behind([0, 1])
    message(a, A, T0_MS, NOW0, partition=0)
    message(a, B, T0_MS, NOW0, partition=1)
    filler(a, T0_MS, NOW0, partition=1)
    assert a.due(NOW0 + WAIT) == []
    assert a.revoke([1]) == 1 and a.progress.time(1) == -1
    a.set_behind([])
    assert [b.trace_id for b in a.due(NOW0 + WAIT)] == [A] and a.buffered_spans == 0


def test_read_progress_is_monotone_and_unknown_before_a_block():
    p = ReadProgress(max_skew_ns=SKEW)
    assert p.read(3, T0_MS, NOW0) == T0_MS * MS and p.time(3) == -1
    assert p.read(3, -1, NOW0) == -1  # no timestamp, nothing known yet
    for _ in range(BLOCK):
        p.read(3, T0_MS + 50, NOW0)
    assert p.time(3) == (T0_MS + 50) * MS
    for _ in range(BLOCK):
        p.read(3, T0_MS, NOW0)  # older again (another producer's clock): time does not go back
    assert p.time(3) == (T0_MS + 50) * MS
    assert p.read(3, T0_MS, NOW0) == (T0_MS + 50) * MS  # an old stamp is raised to the partition's time
    assert p.read(3, -1, NOW0) == (T0_MS + 50) * MS
    assert p.reached(3, 2**62) and not p.is_behind(3)  # never told behind: caught up
    p.set_behind([3])
    assert p.reached(3, (T0_MS + 50) * MS) and not p.reached(3, (T0_MS + 51) * MS)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # trace
            st.integers(0, 1),  # partition of a filler run (traces live on trace % 2)
            st.sampled_from([0, 1, 10, 400, 2**40]),  # Kafka timestamp offset (ms) past T0; 2**40: far future
            st.integers(0, 1_500),  # worker clock step (ms)
            st.sampled_from([True, True, True, False]),  # partitions behind at this look (mostly)
            st.integers(0, 12),  # filler messages after it
        ),
        max_size=50,
    ),
    st.sampled_from([1, 2, 4]),
)
def test_every_span_leaves_once_and_no_trace_waits_past_the_hard_bound(steps, factor):
    """Whatever the timestamps and lag: every span is released exactly once; a trace released on its
    wait was read far enough or its partition was caught up; one released read ahead of its clock
    wait was read far enough; one forced by the hard bound reached
    it; none is still buffered past ``factor`` × wait after its first span arrived."""
    a = assembler(factor)
    now, added, released, first_seen = NOW0, 0, 0, {}
    for i, (trace, part, dt_ms, step_ms, behind, n) in enumerate(steps):
        now += step_ms * MS
        tid = bytes([trace]) * 16
        forced = message(a, tid, T0_MS + dt_ms, now, i, partition=trace % 2)
        first_seen.setdefault(tid, now)
        added += 1
        filler(a, T0_MS + dt_ms, now, n=n, partition=part)
        a.set_behind([trace % 2, part] if behind else [])
        out = forced + a.due(now)
        for b in out:
            first_seen.pop(b.trace_id, None)
            if b.trigger == "decision_wait":
                assert b.first_seen_ns + WAIT <= now
                assert factor == 1 or a.progress.reached(b.partition, b.first_stamp_ns + WAIT)
            elif b.trigger == "backlog_read":  # read far enough: its clock wait over or, read ahead, not
                assert factor > 1 and a.progress.reached(b.partition, b.first_stamp_ns + WAIT)
            else:  # nothing else applies here (no root, no limits): the hard bound, and not before it
                assert b.trigger == b.forced_reason == "backlog_limit"
                assert b.first_seen_ns + factor * WAIT <= now
        released += sum(b.span_count for b in out)
        assert a.buffered_spans == added - released
        assert all(now - seen < factor * WAIT for seen in first_seen.values())
    a.set_behind([])
    released += sum(b.span_count for b in a.due(now + factor * WAIT))
    assert released == added and a.buffered_spans == 0 and len(a) == 0


def backlog_job():
    """The job core as the data plane drives it, deciding on errors: a wait of 1 s, no root-quiet."""
    return make_job(
        job={"processing_guarantee": "at_least_once"},
        assemble={"decision_wait_ms": 1_000, "root_quiet_gap_ms": 0},
        sampling={"policies": [{"name": "errors", "type": "status_code"}]},
    )


def message_at(offset: int, trace: bytes, ts_ms: int, status: str = "UNSET", parent: bytes | None = b"p" * 8):
    """One one-span message of ``trace`` on partition 0, Kafka timestamp ``ts_ms``."""
    m = received(offset, trace, "svc", [span(T0_MS * MS, T0_MS * MS + MS, status, parent=parent)])
    m.timestamp_ms = ts_ms
    return m


def test_the_job_keeps_a_backlog_error_trace_whole():
    """The job core as the data plane drives it: message timestamps in ``Received``, the partitions
    behind at each ``collect``. Before, the error trace was decided (dropped) at the first collect
    a wait after its first span was ingested; its error span, ingested a wait later, came late."""
    job = backlog_job()
    err = os.urandom(16)
    job.ingest(
        [message_at(0, err, T0_MS, parent=None)] + [message_at(i, os.urandom(16), T0_MS) for i in range(1, 20)], NOW0
    )
    out = job.collect(NOW0 + WAIT, behind=[0])
    assert out.kept_traces == out.dropped_traces == 0  # all held: partition 0 is read behind
    job.ingest(
        [message_at(20, err, T0_MS + 500, "ERROR")]
        + [message_at(i, os.urandom(16), T0_MS + 1_500) for i in range(21, 40)],
        NOW0 + 2 * WAIT,
    )
    out = job.collect(NOW0 + 2 * WAIT, behind=[0])
    (kept,) = records(out, "traces.kept")
    trace = avro.decode(avro.KEPT_TRACE, kept.value)
    assert (kept.key, trace["span_count"], trace["late"], trace["policy"]) == (err, 2, False, "errors")
    assert out.kept_traces == 1 and out.dropped_traces == 19  # the rest of the first batch; the second waits


def test_the_worker_reports_partitions_not_read_to_the_cached_end(monkeypatch):
    """What the data plane tells ``collect``: owned partitions whose position is short of the cached
    high watermark, or that have one but no position yet (nothing read since assignment)."""
    ends = {0: 9, 1: 9, 2: 4, 3: -1001, 4: 0}  # cached high watermarks; -1001: none fetched yet
    positions = {0: 5, 1: 9, 2: -1001, 3: -1001, 4: -1001}

    class Consumer:
        def position(self, tps):
            return [TopicPartition(tp.topic, tp.partition, positions[tp.partition]) for tp in tps]

        def get_watermark_offsets(self, tp, cached):
            assert cached  # no broker round trip per flush
            return 0, ends[tp.partition]

    monkeypatch.setattr(worker_mod, "Consumer", lambda conf: Consumer())
    monkeypatch.setattr(worker_mod, "OutputProducer", lambda conf: None)
    w = worker_mod.Worker(make_job().config, make_job())
    w.assigned = {0, 1, 2, 3, 4}
    assert sorted(w._behind()) == [0, 2]


def test_the_job_decides_a_backlog_read_ahead_and_lets_go_of_its_bytes():
    """The job core reading a partition an hour behind: a trace goes once the partition is read a
    wait past its first message, 10 ms of worker clock after it was read, and its buffer — still
    referenced by the assembler's clock queue until its clock deadline — holds no raw bytes any
    more. Before, that buffer kept every message of the trace for a decision wait after the
    decision (make chaos overload: peak RSS 185.7 MiB against a 183.5 MiB bound; 116.7 after)."""
    job = backlog_job()
    first = os.urandom(16)
    job.collect(NOW0, behind=[0])  # the data plane's last look: partition 0 not read to its end
    job.ingest(
        [message_at(0, first, T0_MS)] + [message_at(i, os.urandom(16), T0_MS + 1_000) for i in range(1, 10)], NOW0
    )
    out = job.collect(NOW0 + 10 * MS, behind=[0])
    decided = [avro.decode(avro.TRACE_DECISION, r.value) for r in records(out, job.config.topics.decisions.name)]
    assert [(d["trace_id"], d["trigger"]) for d in decided] == [(first, "backlog_read")]
    (stale,) = [b for b in job.assembler._waiting if b.trace_id == first]  # until its clock deadline
    assert stale.messages == [] and stale.spans == []
