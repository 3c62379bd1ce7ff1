import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.sli import OVERFLOW_SERVICE, SliWindows, sketch_from_record, sketch_to_record
from tests.spans import span

S = 1_000_000_000
MS = 1_000_000


def test_exact_counts_per_service_and_window_merged_across_partitions():
    w = SliWindows(window_ns=10 * S, grace_ns=2 * S)
    w.add(0, "a", [span(0, 5 * MS, "ERROR", parent=None), span(0, 1 * MS)])
    w.add(1, "a", [span(9 * S, 9 * S + 2 * MS)])
    w.add(1, "a", [span(10 * S, 10 * S + 1 * MS)])  # next window
    w.add(0, "b", [span(0, 3 * MS)])
    assert w.due(11 * S) == []
    closed = {(x.service, x.status): x for x in w.due(12 * S)}
    assert set(closed) == {("a", "ERROR"), ("a", "UNSET"), ("b", "UNSET")}
    a = closed["a", "UNSET"]
    assert (a.span_count, a.error_count, a.root_count, a.partitions) == (2, 0, 0, {0, 1})
    assert a.min_ms == pytest.approx(1.0) and a.max_ms == pytest.approx(2.0) and a.sum_ms == pytest.approx(3.0)
    e = closed["a", "ERROR"]
    assert (e.span_count, e.error_count, e.root_count, e.partitions, e.operation, e.span_kind) == (
        1,
        1,
        1,
        {0},
        "op",
        "SERVER",
    )
    assert len(w) == 1  # the second window of "a" is still open


def test_holds_are_registered_once_per_window_touched():
    w = SliWindows(window_ns=10 * S, grace_ns=0)
    hold = object()
    assert w.add(0, "a", [span(0, 1), span(0, 2), span(0, 10 * S + 1)], hold) == 2
    windows = w.due(100 * S)
    assert sum(x.holds.count(hold) for x in windows) == 2


def test_late_span_for_a_closed_window_opens_a_new_partial():
    w = SliWindows(window_ns=10 * S, grace_ns=0)
    w.add(0, "a", [span(0, 1 * MS)])
    assert [x.span_count for x in w.due(20 * S)] == [1]
    w.add(0, "a", [span(0, 2 * MS)])
    assert [x.span_count for x in w.due(20 * S)] == [1]


def test_service_cardinality_is_bounded():
    w = SliWindows(window_ns=S, grace_ns=0, max_services=2)
    for name in ("a", "b", "c", "d"):
        w.add(0, name, [span(0, 1)])
    assert sorted(x.service for x in w.due(10 * S)) == [OVERFLOW_SERVICE, "a", "b"]


def test_revoke_forgets_partition_contributions():
    w = SliWindows(window_ns=S, grace_ns=0)
    w.add(0, "a", [span(0, 1)])
    w.add(1, "a", [span(0, 1), span(0, 1)])
    w.revoke([1])
    assert [x.span_count for x in w.due(10 * S)] == [1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=60_000), min_size=1, max_size=400))
def test_quantiles_within_relative_accuracy_of_exact(latencies):
    w = SliWindows(window_ns=10**15, grace_ns=0, relative_accuracy=0.01)
    w.add(0, "a", [span(0, int(ms * MS)) for ms in latencies])
    (agg,) = w.due(10**16)
    exact = sorted(int(ms * MS) / MS for ms in latencies)
    for q in (0.5, 0.9, 0.99):
        # DDSketch's rank convention: the value at rank floor(q * (n - 1))
        truth = exact[int(q * (len(exact) - 1))]
        assert agg.quantile(q) == pytest.approx(truth, rel=0.0101)


def test_sketch_record_round_trip_keeps_quantiles_and_count():
    w = SliWindows(window_ns=10**15, grace_ns=0)
    rng = random.Random(3)
    w.add(0, "a", [span(0, int(rng.lognormvariate(3, 1) * MS)) for _ in range(2_000)] + [span(5, 5)])
    (agg,) = w.due(10**16)
    back = sketch_from_record(sketch_to_record(agg.sketch))
    assert back.count == agg.sketch.count == 2_001
    for q in (0.5, 0.9, 0.99):
        assert back.get_quantile_value(q) == pytest.approx(agg.sketch.get_quantile_value(q))
