"""``WindowAggregate.quantiles`` (one pass over the bins for the four quantiles of an SLI partial)
answers exactly what ``quantile`` — DDSketch's ``get_quantile_value``, one walk per quantile — does,
bit for bit, so the ``sli.windows`` records it fills are unchanged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.sli import SliWindows, window_record

QS = (0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)
S = 1_000_000_000


def windows(latencies_ms: list[float], accuracy: float):
    sli = SliWindows(window_ns=10 * S, grace_ns=S, relative_accuracy=accuracy)
    spans = [
        {
            "start_time_unix_nano": 100 * S,
            "end_time_unix_nano": 100 * S + int(ms * 1_000_000),
            "name": "GET /x",
            "kind": "SERVER",
            "status_code": "OK",
            "parent_span_id": b"p" * 8,
        }
        for ms in latencies_ms
    ]
    sli.add(0, "svc", spans)
    return sli.due(10**15, flush_all=True)


latency = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-6, max_value=1e-3),  # at or under the sketch's smallest positive value
    st.floats(min_value=1e-3, max_value=3.6e6),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(latency, min_size=1, max_size=300), st.sampled_from([0.01, 0.02, 0.05]))
def test_quantiles_equal_quantile_one_by_one(latencies_ms, accuracy):
    for w in windows(latencies_ms, accuracy):
        assert w.quantiles(QS) == [w.quantile(q) for q in QS]


@settings(max_examples=100, deadline=None)
@given(st.lists(latency, min_size=1, max_size=200))
def test_the_window_record_keeps_its_quantiles(latencies_ms):
    for w in windows(latencies_ms, 0.01):
        latency_ms = window_record(w, "w", 1)["latency_ms"]
        assert [latency_ms[k] for k in ("p50", "p90", "p95", "p99")] == [w.quantile(q) for q in (0.5, 0.9, 0.95, 0.99)]


def test_an_empty_window_answers_zeros():
    w = windows([5.0], 0.01)[0]
    w.span_count = 0
    assert w.quantiles((0.5, 0.99)) == [0.0, 0.0]
