from operators.assemble import TraceAssembler
from operators.decide import Decision
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
    assert len(due[0].spans) == 3 and due[0].fragments == ["m1", "m2"] and due[0].forced_reason == ""
    assert a.buffered_spans == 1 and len(a) == 1


def test_memory_bound_forces_oldest_traces_first():
    a = TraceAssembler(decision_wait_ns=10**12, max_buffered_spans=3)
    for i in range(4):
        a.add(bytes([i]) * 16, 0, [span()], i, now_ns=i)
    due = a.due(10)
    assert [b.fragments for b in due] == [[0]]
    assert due[0].forced_reason == "memory_bound" and a.buffered_spans == 3


def test_span_limit_forces_a_decision_for_that_trace_only():
    a = TraceAssembler(decision_wait_ns=10**12, max_spans_per_trace=3)
    a.add(b"G" * 16, 0, [span(), span()], 1, now_ns=0)
    a.add(b"S" * 16, 0, [span()], 2, now_ns=0)
    a.add(b"G" * 16, 0, [span(), span()], 3, now_ns=1)
    due = a.due(2)
    assert [(b.trace_id, b.forced_reason, len(b.spans)) for b in due] == [(b"G" * 16, "span_limit", 4)]
    assert a.buffered_spans == 1


def test_decision_cache_is_bounded_lru():
    a = TraceAssembler(decision_wait_ns=1, decision_cache_size=2)
    keep = Decision(True, "p", "r")
    a.remember(b"1" * 16, keep)
    a.remember(b"2" * 16, keep)
    assert a.decided(b"1" * 16) is keep  # touch: 2 is now the oldest
    a.remember(b"3" * 16, keep)
    assert a.decided(b"2" * 16) is None and a.decided(b"1" * 16) is keep


def test_revoke_drops_only_lost_partitions():
    a = TraceAssembler(decision_wait_ns=10)
    a.add(b"A" * 16, 0, [span()], 1, now_ns=0)
    a.add(b"B" * 16, 1, [span(), span()], 2, now_ns=0)
    assert a.revoke([1]) == 1
    assert a.buffered_spans == 1 and [b.trace_id for b in a.due(100)] == [b"A" * 16]
