from hypothesis import given
from hypothesis import strategies as st

from operators.commit import CommitTracker


def test_done_message_behind_an_undone_one_waits():
    t = CommitTracker()
    a = t.track(0, 10, "a", 1)
    b = t.track(0, 11, "b", 1)
    t.release(b)
    assert t.ready() == []
    t.release(a)
    assert [h.ref for h in t.ready()] == ["a", "b"]
    assert len(t) == 0


def test_partitions_are_independent_and_revoke_forgets():
    t = CommitTracker()
    a = t.track(0, 1, "a", 1)
    t.track(1, 1, "b", 0)
    assert [h.ref for h in t.ready()] == ["b"]
    assert t.oldest_offsets() == {0: 1}
    assert t.revoke([0]) == 1
    t.release(a)  # late release of a forgotten hold must not resurrect it
    assert t.ready() == [] and len(t) == 0


@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=60), st.randoms())
def test_ready_is_always_an_in_order_prefix_of_completed_messages(counts, rnd):
    t = CommitTracker()
    holds = [t.track(0, off, off, c) for off, c in enumerate(counts)]
    obligations = [h for h in holds for _ in range(h.count)]
    rnd.shuffle(obligations)
    emitted = []
    for h in obligations:
        t.release(h)
        emitted += [x.ref for x in t.ready()]
        # everything handed out is a contiguous prefix, and all of it is complete
        assert emitted == list(range(len(emitted)))
        assert all(holds[i].count == 0 for i in emitted)
    emitted += [x.ref for x in t.ready()]
    assert emitted == list(range(len(counts)))
