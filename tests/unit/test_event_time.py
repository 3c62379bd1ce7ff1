"""Event-time trace assembly: deadlines on span end times, per-partition watermarks with allowed
lateness, idle partitions, and decisions that do not depend on when due() runs."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.assemble import TraceAssembler
from operators.watermark import PartitionWatermarks
from tests.spans import span

MS = 1_000_000
SEC = 1_000 * MS
IDLE = 10 * SEC


def et(**kw) -> TraceAssembler:
    kw.setdefault("decision_wait_ns", 100 * MS)
    kw.setdefault("idle_partition_ns", IDLE)
    return TraceAssembler(event_time=True, **kw)


def ids(bufs):
    return [b.trace_id for b in bufs]


A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


# ---------------------------------------------------------------- watermarks
def test_partition_watermarks_trail_the_newest_event_by_the_lateness_and_never_go_back():
    w = PartitionWatermarks(allowed_lateness_ns=5)
    assert w.get(0) is None
    assert w.observe(0, 100) == 95 and w.observe(0, 90) == 95 and w.observe(0, 120) == 115
    assert w.get(0) == 115 and w.max_event(0) == 120 and w.get(1) is None
    assert w.observe(1, 10) == 5 and w.get(0) == 115  # independent partitions
    w.forget([0])
    assert w.get(0) is None and w.get(1) == 5


def test_partition_watermarks_idle_reports_each_quiet_partition_once_until_touched_again():
    w = PartitionWatermarks(0)
    w.touch(0, 0)
    w.touch(1, 5)
    assert w.idle(9, 10) == []
    assert w.idle(10, 10) == [0]
    assert w.idle(100, 10) == [1] and w.idle(1000, 10) == []
    w.touch(0, 1000)
    assert w.idle(1010, 10) == [0]
    with pytest.raises(ValueError):
        PartitionWatermarks(-1)


# ---------------------------------------------------------------- sealing
def test_a_trace_is_sealed_by_add_when_its_partitions_watermark_passes_its_deadline():
    a = et()
    assert a.add(A, 0, [span(start=0, end=10 * MS)], "m1", now_ns=0) == []  # deadline 110 ms
    assert a.add(A, 0, [span(end=30 * MS)], "m2", now_ns=1) == []
    assert a.add(B, 0, [span(end=109 * MS)], "m3", now_ns=2) == []  # watermark 109 ms < 110 ms
    assert a.due(3) == []  # due() never seals on the watermark
    (sealed,) = a.add(C, 0, [span(end=110 * MS)], "m4", now_ns=4)
    assert sealed.trace_id == A and sealed.trigger == "decision_wait" and sealed.forced_reason == ""
    assert sealed.messages == ["m1", "m2"] and len(sealed.spans) == 2
    assert sealed.decided_at_ns == 110 * MS and sealed.deadline_ns == 110 * MS
    assert a.buffered_spans == 2 and len(a) == 2 and {b.trace_id for b in a} == {B, C}


def test_sealed_in_deadline_then_trace_id_order_and_a_message_can_seal_its_own_trace():
    a = et()
    a.add(C, 0, [span(end=5 * MS)], 1, now_ns=0)
    a.add(B, 0, [span(end=5 * MS)], 2, now_ns=0)
    a.add(A, 0, [span(end=7 * MS)], 3, now_ns=0)
    out = a.add(b"D" * 16, 0, [span(end=500 * MS)], 4, now_ns=0)  # a jump: everything is past, itself too
    assert ids(out) == [B, C, A]
    # a message much older than the watermark starts a trace that is sealed at once
    (old,) = a.add(b"E" * 16, 0, [span(end=1 * MS)], 5, now_ns=0)
    assert old.trace_id == b"E" * 16 and old.decided_at_ns == 500 * MS and len(a) == 1


def test_allowed_lateness_delays_sealing():
    a = et(allowed_lateness_ns=50 * MS)
    a.add(A, 0, [span(end=0)], 1, now_ns=0)  # deadline 100 ms
    assert a.add(B, 0, [span(end=149 * MS)], 2, now_ns=0) == []  # watermark 99 ms
    assert a.add(A, 0, [span(end=20 * MS)], 3, now_ns=0) == []  # a straggler still joins its trace
    (sealed,) = a.add(B, 0, [span(end=150 * MS)], 4, now_ns=0)  # watermark 100 ms
    assert sealed.trace_id == A and len(sealed.spans) == 2 and sealed.decided_at_ns == 100 * MS
    assert a.watermarks.get(0) == 100 * MS


def test_root_plus_quiet_gap_in_event_time():
    a = et(decision_wait_ns=5 * SEC, root_quiet_gap_ns=1 * SEC)
    a.add(A, 0, [span(end=100 * MS, parent=b"x" * 8)], 1, now_ns=0)
    a.add(B, 0, [span(end=100 * MS, parent=b"x" * 8)], 2, now_ns=0)  # no root: waits the full wait
    a.add(A, 0, [span(end=400 * MS, parent=None)], 3, now_ns=0)  # root: deadline 1.4 s
    assert a.add(A, 0, [span(end=600 * MS)], 4, now_ns=0) == []  # a later span end: deadline 1.6 s
    assert a.add(C, 0, [span(end=1_599 * MS)], 5, now_ns=0) == []
    (quiet,) = a.add(C, 0, [span(end=1_600 * MS)], 6, now_ns=0)
    assert quiet.trace_id == A and quiet.trigger == "root_quiet" and len(quiet.spans) == 3
    assert quiet.deadline_ns == quiet.decided_at_ns == 1_600 * MS and quiet.last_seen_ns == 600 * MS
    assert ids(a.add(C, 0, [span(end=5_099 * MS)], 7, now_ns=0)) == []
    rest = a.add(C, 0, [span(end=5_100 * MS)], 8, now_ns=0)
    assert [(b.trace_id, b.trigger) for b in rest] == [(B, "decision_wait")]
    # the quiet deadline is the earlier one only: a root whose trace keeps growing waits the wait
    b = et(decision_wait_ns=1 * SEC, root_quiet_gap_ns=1 * SEC)
    b.add(A, 0, [span(end=0, parent=None)], 1, now_ns=0)
    b.add(A, 0, [span(end=500 * MS)], 2, now_ns=0)
    (w,) = b.add(C, 0, [span(end=1 * SEC)], 3, now_ns=0)
    assert w.trace_id == A and w.trigger == "decision_wait"


def test_root_quiet_gap_zero_is_off_in_event_time():
    a = et(decision_wait_ns=5 * SEC, root_quiet_gap_ns=0)
    a.add(A, 0, [span(end=0, parent=None)], 1, now_ns=0)
    assert a.add(B, 0, [span(end=4_999 * MS)], 2, now_ns=0) == []


def test_partitions_are_independent():
    a = et()
    a.add(A, 0, [span(end=0)], 1, now_ns=0)
    a.add(B, 1, [span(end=0)], 2, now_ns=0)
    assert a.add(C, 1, [span(end=10 * SEC)], 3, now_ns=0) != []  # partition 1 moves on…
    assert [b.trace_id for b in a] == [A, C]  # …partition 0's trace does not
    assert a.watermarks.get(0) == 0 and a.watermarks.get(1) == 10 * SEC
    (sealed,) = a.add(b"D" * 16, 0, [span(end=100 * MS)], 4, now_ns=0)
    assert sealed.trace_id == A and sealed.partition == 0


def test_idle_partitions_flush_via_due_and_the_buffer_empties():
    a = et(allowed_lateness_ns=10 * MS)
    a.add(A, 0, [span(end=0), span(end=1)], 1, now_ns=0, size_bytes=100)
    a.add(B, 0, [span(end=50 * MS)], 2, now_ns=1 * SEC, size_bytes=40)
    a.add(C, 1, [span(end=0)], 3, now_ns=5 * SEC, size_bytes=7)
    assert a.buffered_spans == 4 and a.buffered_bytes == 147
    assert a.due(1 * SEC + IDLE - 1) == []
    out = a.due(1 * SEC + IDLE)  # partition 0 got nothing for the idle time; partition 1 did
    assert [(b.trace_id, b.trigger, b.decided_at_ns) for b in out] == [
        (A, "idle_partition", 40 * MS),
        (B, "idle_partition", 40 * MS),
    ]
    assert a.buffered_spans == 1 and a.buffered_bytes == 7 and len(a) == 1
    assert a.due(1 * SEC + IDLE) == []  # reported once
    (c,) = a.due(5 * SEC + IDLE)
    assert c.trace_id == C and a.buffered_spans == 0 and a.buffered_bytes == 0 and len(a) == 0
    # the partition's watermark survives the flush: its next input continues from it
    assert a.watermarks.get(0) == 40 * MS
    assert a.add(b"D" * 16, 0, [span(end=1 * MS)], 4, now_ns=20 * SEC) == []  # deadline 101 ms
    (d,) = a.add(b"E" * 16, 0, [span(end=111 * MS)], 5, now_ns=20 * SEC)
    assert d.trace_id == b"D" * 16 and d.decided_at_ns == 101 * MS


def test_span_limit_and_trace_bytes_seal_from_add_in_event_time():
    a = et(decision_wait_ns=10 * SEC, max_spans_per_trace=3, max_trace_bytes=1_000)
    a.add(A, 0, [span(end=5 * MS), span(end=5 * MS)], 1, now_ns=0, size_bytes=10)
    a.add(B, 0, [span(end=7 * MS)], 2, now_ns=0, size_bytes=10)
    (forced,) = a.add(A, 0, [span(end=6 * MS)], 3, now_ns=0, size_bytes=10)
    assert forced.trace_id == A and forced.forced_reason == forced.trigger == "span_limit"
    assert forced.decided_at_ns == 7 * MS and len(forced.spans) == 3
    (big,) = a.add(C, 0, [span(end=8 * MS)], 4, now_ns=0, size_bytes=1_000)
    assert big.trigger == "trace_bytes" and a.buffered_spans == 1 and a.buffered_bytes == 10
    assert a.due(1) == [] and ids(a.add(C, 0, [span(end=20 * SEC)], 5, now_ns=0)) == [B]


def test_memory_bound_forces_the_oldest_deadlines_across_partitions_in_due():
    a = et(decision_wait_ns=10 * SEC, max_buffered_spans=3)
    a.add(A, 0, [span(end=3 * MS)], 1, now_ns=0)
    a.add(B, 1, [span(end=1 * MS)], 2, now_ns=0)
    a.add(C, 2, [span(end=2 * MS)], 3, now_ns=0)
    a.add(b"D" * 16, 0, [span(end=4 * MS), span(end=4 * MS)], 4, now_ns=0)
    out = a.due(1)
    assert [(b.trace_id, b.forced_reason, b.decided_at_ns) for b in out] == [
        (B, "memory_bound", 1 * MS),
        (C, "memory_bound", 2 * MS),
    ]
    assert a.buffered_spans == 3 and a.over_bound() and len(a) == 2


def test_revoke_forgets_the_partitions_watermarks_and_traces():
    a = et()
    a.add(A, 0, [span(end=50 * MS)], 1, now_ns=0, size_bytes=3)
    a.add(B, 1, [span(end=50 * MS), span(end=60 * MS)], 2, now_ns=0, size_bytes=5)
    assert a.revoke([1]) == 1
    assert a.buffered_spans == 1 and a.buffered_bytes == 3 and a.watermarks.get(1) is None
    assert ids(a.due(10**15)) == [A]  # only partition 0 is still tracked as idle
    # the partition comes back (reassigned): it starts from scratch
    a.add(B, 1, [span(end=0)], 3, now_ns=0)
    assert a.watermarks.get(1) == 0 and B in ids(a)


def test_processing_time_add_returns_nothing_and_keeps_its_behaviour():
    a = TraceAssembler(decision_wait_ns=100 * MS)
    assert a.add(A, 0, [span(end=10**15)], 1, now_ns=0) == []
    assert a.due(99 * MS) == [] and ids(a.due(100 * MS)) == [A]


# ---------------------------------------------------------------- determinism
@st.composite
def recorded(draw):
    """A recording over 3 partitions: per partition, messages of a few traces with event times
    that mostly grow (jitter and stragglers included), roots, multi-span messages."""
    msgs = []
    for p in range(3):
        t = draw(st.integers(0, 10 * SEC))
        for i in range(draw(st.integers(0, 25))):
            t += draw(st.integers(0, 400)) * MS
            trace = draw(st.integers(0, 6))
            n = draw(st.integers(1, 3))
            jitter = [draw(st.integers(0, 300)) * MS for _ in range(n)]
            root = draw(st.booleans())
            msgs.append(
                (
                    p,
                    bytes([p, trace]) * 8,
                    [
                        span(
                            end=max(0, t - jitter[j]),
                            parent=None if root and j == 0 else b"p" * 8,
                            span_id=bytes([p, i, j]) + b"\0" * 5,
                        )
                        for j in range(n)
                    ],
                    draw(st.integers(1, 200)),
                )
            )
    return msgs


def replay(msgs, schedule, rnd=None, **kw):
    """Feed the recording as the job would: traces decided earlier are remembered (their late spans
    never reach the assembler). schedule: when to call due() — far below the idle time."""
    a = et(
        decision_wait_ns=kw.get("wait", 800 * MS),
        root_quiet_gap_ns=kw.get("gap", 200 * MS),
        allowed_lateness_ns=kw.get("lateness", 100 * MS),
        max_spans_per_trace=6,
        max_trace_bytes=700,
    )
    decided, sealed = set(), []

    def take(bufs):
        for b in bufs:
            decided.add(b.trace_id)
            sealed.append((b.trace_id, sorted(s["span_id"] for s in b.spans), b.trigger, b.decided_at_ns))

    for k, (p, tid, spans, size) in enumerate(msgs):
        if tid in decided:
            continue
        take(a.add(tid, p, spans, k, now_ns=k, size_bytes=size))
        if schedule == "always" or (schedule == "random" and rnd.random() < 0.3):
            take(a.due(k))
    assert a.buffered_spans == sum(len(b.spans) for b in a) and a.buffered_bytes >= 0
    before_flush = list(sealed)
    take(a.due(len(msgs) + IDLE))  # the end of the recording: every partition goes idle
    assert a.buffered_spans == 0 and a.buffered_bytes == 0 and len(a) == 0
    return before_flush, sealed


def per_partition(sealed):
    return {p: [s for s in sealed if s[0][0] == p] for p in range(3)}


@settings(max_examples=200, deadline=None)
@given(recorded(), st.randoms(use_true_random=False), st.integers(0, 2))
def test_replay_decides_the_same_whenever_due_runs_and_however_partitions_interleave(msgs, rnd, cfg):
    kw = [{}, {"gap": 0, "lateness": 0}, {"wait": 300 * MS, "gap": 500 * MS, "lateness": 1 * SEC}][cfg]
    order = sorted(msgs, key=lambda m: m[0])  # partition by partition
    runs = [
        replay(order, "never", **kw),
        replay(order, "always", **kw),
        replay(order, "random", rnd, **kw),
        replay(order, "never", **kw),
    ]
    assert all(r == runs[0] for r in runs[1:])
    # a different interleaving of the partitions (each partition's order kept): same per partition
    queues = {p: [m for m in order if m[0] == p] for p in range(3)}
    mixed = []
    while any(queues.values()):
        p = rnd.choice([q for q in queues if queues[q]])
        mixed.append(queues[p].pop(0))
    other = replay(mixed, "random", rnd, **kw)
    assert per_partition(other[0]) == per_partition(runs[0][0])
    # every span left exactly once (late spans of decided traces are the caller's)
    assert len({sid for s in runs[0][1] for sid in s[1]}) == sum(len(s[1]) for s in runs[0][1])


def test_replay_twice_with_a_fixed_recording_gives_identical_decisions():
    rng = random.Random(7)
    msgs, t = [], 0
    for i in range(3_000):
        p = rng.randrange(3)
        t += rng.randrange(0, 20) * MS
        msgs.append(
            (
                p,
                bytes([p, rng.randrange(40)]) * 8,
                [
                    span(
                        end=max(0, t - rng.randrange(0, 200) * MS),
                        parent=None if rng.random() < 0.2 else b"p" * 8,
                        span_id=i.to_bytes(8, "big"),
                    )
                ],
                100,
            )
        )
    first, second = replay(msgs, "never"), replay(msgs, "random", random.Random(1))
    assert first == second and len(first[0]) > 100


def test_moving_deadlines_keep_the_heap_bounded_and_the_order_right():
    a = et(decision_wait_ns=100 * SEC, root_quiet_gap_ns=1 * SEC)
    a.add(A, 0, [span(end=0, parent=None)], 0, now_ns=0)
    a.add(B, 0, [span(end=0, parent=None)], 0, now_ns=0)
    sealed = []
    for i in range(1, 5_000):  # every message moves A's quiet deadline
        sealed += [(i, b.trace_id) for b in a.add(A, 0, [span(end=i * MS)], i, now_ns=0)]
    assert len(a._by_deadline[0]) <= 2 * len(a) + 1025
    assert sealed == [(1_000, B)] and len(a) == 1  # B's quiet deadline (1 s) passed; A's kept moving
    (sealed,) = a.add(C, 0, [span(end=4_999 * MS + 1 * SEC)], 9, now_ns=0)
    assert sealed.trace_id == A and len(sealed.spans) == 5_000 and sealed.trigger == "root_quiet"
