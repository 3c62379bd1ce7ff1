from hypothesis import given, settings
from hypothesis import strategies as st

from operators.assemble import TraceAssembler
from tests.spans import span

MS = 1_000_000


def test_trace_is_due_after_decision_wait_with_all_its_spans():
    a = TraceAssembler(decision_wait_ns=100 * MS)
    a.add(b"A" * 16, 0, [span()], "m1", now_ns=0)
    a.add(b"A" * 16, 0, [span(), span()], "m2", now_ns=50 * MS)
    a.add(b"B" * 16, 1, [span()], "m3", now_ns=60 * MS)
    assert a.due(99 * MS) == []
    due = a.due(100 * MS)
    assert [b.trace_id for b in due] == [b"A" * 16]
    assert len(due[0].spans) == 3 and due[0].messages == ["m1", "m2"] and due[0].forced_reason == ""
    assert a.buffered_spans == 1 and len(a) == 1


def test_memory_bound_forces_oldest_traces_first():
    a = TraceAssembler(decision_wait_ns=10**12, max_buffered_spans=3)
    for i in range(4):
        a.add(bytes([i]) * 16, 0, [span()], i, now_ns=i)
    due = a.due(10)
    assert [b.messages for b in due] == [[0]]
    assert due[0].forced_reason == "memory_bound" and a.buffered_spans == 3


def test_span_limit_forces_a_decision_for_that_trace_only_out_of_add():
    a = TraceAssembler(decision_wait_ns=10**12, max_spans_per_trace=3)
    assert a.add(b"G" * 16, 0, [span(), span()], 1, now_ns=0) == []
    assert a.add(b"S" * 16, 0, [span()], 2, now_ns=0) == []
    forced = a.add(b"G" * 16, 0, [span(), span()], 3, now_ns=1)  # decided at once: the rest follows it
    assert [(b.trace_id, b.forced_reason, len(b.spans)) for b in forced] == [(b"G" * 16, "span_limit", 4)]
    assert a.buffered_spans == 1 and a.due(2) == []


def test_revoke_drops_only_lost_partitions():
    a = TraceAssembler(decision_wait_ns=10)
    a.add(b"A" * 16, 0, [span()], 1, now_ns=0)
    a.add(b"B" * 16, 1, [span(), span()], 2, now_ns=0)
    assert a.revoke([1]) == 1
    assert a.buffered_spans == 1 and [b.trace_id for b in a.due(100)] == [b"A" * 16]


def test_root_plus_quiet_gap_decides_before_the_decision_wait():
    a = TraceAssembler(decision_wait_ns=5_000 * MS, root_quiet_gap_ns=1_000 * MS)
    a.add(b"R" * 16, 0, [span(parent=b"x" * 8)], 1, now_ns=0)
    a.add(b"R" * 16, 0, [span(parent=None)], 2, now_ns=100 * MS)  # the root arrives
    a.add(b"N" * 16, 0, [span(parent=b"x" * 8)], 3, now_ns=100 * MS)  # no root: waits the full wait
    a.add(b"R" * 16, 0, [span(parent=b"y" * 8)], 4, now_ns=600 * MS)  # activity resets the quiet gap
    assert a.due(1_599 * MS) == []
    (due,) = a.due(1_600 * MS)
    assert due.trace_id == b"R" * 16 and due.trigger == "root_quiet" and len(due.spans) == 3
    assert a.buffered_spans == 1 and a.due(5_099 * MS) == []
    (rest,) = a.due(5_100 * MS)
    assert rest.trace_id == b"N" * 16 and rest.trigger == "decision_wait"


def test_root_quiet_gap_zero_means_off_and_forced_traces_leave_the_quiet_index():
    off = TraceAssembler(decision_wait_ns=5_000 * MS, root_quiet_gap_ns=0)
    off.add(b"R" * 16, 0, [span(parent=None)], 1, now_ns=0)
    assert off.due(4_999 * MS) == []
    on = TraceAssembler(decision_wait_ns=5_000 * MS, root_quiet_gap_ns=10 * MS, max_spans_per_trace=2)
    (forced,) = on.add(b"R" * 16, 0, [span(parent=None), span()], 1, now_ns=0)  # span limit forces it at once
    assert forced.trigger == "span_limit" and on.due(10**12) == [] and on.buffered_spans == 0
    on.add(b"Q" * 16, 3, [span(parent=None)], 2, now_ns=0)
    assert on.revoke([3]) == 1 and on.due(10**12) == [] and on.buffered_spans == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4), st.booleans(), st.integers(0, 300)), max_size=60),
    st.integers(0, 200),
    st.integers(1, 20),
)
def test_every_span_leaves_exactly_once_whatever_the_decision_points(adds, gap_ms, bound):
    a = TraceAssembler(
        decision_wait_ns=500 * MS, root_quiet_gap_ns=gap_ms * MS, max_buffered_spans=bound, max_spans_per_trace=7
    )
    now, added, released = 0, 0, 0
    for i, (trace, n, root, step_ms) in enumerate(adds):
        now += step_ms * MS
        forced = a.add(
            bytes([trace]) * 16,
            trace % 2,
            [span(parent=None if root and j == 0 else b"p" * 8) for j in range(n)],
            i,
            now,
        )
        added += n
        released += sum(len(b.spans) for b in forced)
        released += sum(len(b.spans) for b in a.due(now))
        assert a.buffered_spans == added - released <= bound  # the global bound holds after each due()
    released += sum(len(b.spans) for b in a.due(now + 10**12))
    assert released == added and a.buffered_spans == 0 and len(a) == 0
