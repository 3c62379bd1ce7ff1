from hypothesis import given
from hypothesis import strategies as st

from operators.decide import Decision
from operators.decision_cache import DROPPED, DecisionCache

KEEP = Decision(True, "errors", "status_code")
DROP = Decision(False, "", "not_sampled")


def tid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_kept_lru_is_bounded_and_touch_refreshes():
    c = DecisionCache(kept_size=2, dropped_size=10)
    c.remember(tid(1), KEEP, 0, [5])
    c.remember(tid(2), KEEP, 0, [6])
    assert c.get(tid(1)).offsets == {5}  # touch: 2 is now the oldest
    c.remember(tid(3), KEEP, 0, [7])
    assert c.get(tid(2)) is None and c.get(tid(1)) is not None and c.get(tid(3)) is not None


def test_offsets_accumulate_for_late_spans():
    c = DecisionCache()
    c.remember(tid(1), KEEP, 3, [10, 11])
    c.remember(tid(1), KEEP, 3, [40])
    entry = c.get(tid(1))
    assert entry.offsets == {10, 11, 40} and entry.partition == 3 and entry.decision is KEEP


def test_dropped_filter_remembers_between_n_and_2n():
    c = DecisionCache(kept_size=1, dropped_size=100)
    for i in range(250):
        c.remember(tid(i), DROP, 0)
    # generations of 100: 0-99 rotated out, 100-199 old, 200-249 young
    assert all(c.get(tid(i)) is DROPPED for i in range(100, 250))
    assert sum(c.get(tid(i)) is DROPPED for i in range(100)) == 0
    assert c.get(tid(10_000)) is None


def test_a_drop_replaces_a_kept_entry():
    c = DecisionCache()
    c.remember(tid(1), KEEP, 0, [1])
    c.remember(tid(1), DROP, 0)
    assert c.get(tid(1)) is DROPPED


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=300))
def test_never_forgets_the_most_recent_decisions(events):
    c = DecisionCache(kept_size=8, dropped_size=8)
    last: dict[int, bool] = {}
    for i, keep in events:
        c.remember(tid(i), KEEP if keep else DROP, 0)
        last[i] = keep
    recent = list(dict.fromkeys(i for i, _ in reversed(events)))[:8]
    for i in recent:
        got = c.get(tid(i))
        if last[i]:
            assert got is not None and got is not DROPPED
        else:
            assert got is DROPPED
