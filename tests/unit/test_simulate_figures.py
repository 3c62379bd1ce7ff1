"""The pieces of ``tailsift simulate`` that compute figures: the simulated clock, the per-config
counters, the timeline, the bounded difference lists and the example choice (pure, no Job)."""

from __future__ import annotations

from collections import Counter

from pipeline.simulate.clock import SimClock
from pipeline.simulate.figures import (
    NO_ROOT,
    ConfigFigures,
    DecisionFacts,
    Diff,
    Examples,
    TraceFacts,
    buckets_for,
    timeline,
)

S = 1_000_000_000
MS = 1_000_000


def span(name, start, end, status="UNSET", parent=b"p" * 8):
    return {
        "name": name,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status_code": status,
        "parent_span_id": parent,
    }


# ------------------------------------------------------------------ clock
def test_the_clock_follows_event_time_and_never_goes_back():
    c = SimClock(max_jump_ns=300 * S)
    assert c.now_ns is None and c.observe(None, 5) is None
    assert c.observe(100 * S, 1_000) == 100 * S
    assert c.observe(90 * S, 2_000) == 100 * S  # older event: no change
    assert c.observe(None, 3_000) == 100 * S
    assert c.observe(399 * S, 3_000) == 399 * S  # within the jump bound


def test_a_far_future_span_does_not_move_the_clock_unless_the_log_says_time_passed():
    c = SimClock(max_jump_ns=300 * S)
    c.observe(1_000 * S, 1_000_000)
    # a span stamped an hour ahead, Kafka timestamp a second later: refused (the job dead-letters it)
    assert c.observe(4_600 * S, 1_001_000) == 1_000 * S
    # without a timestamp nothing vouches for the jump either
    assert c.observe(4_600 * S, -1) == 1_000 * S
    # an idle hour in the traffic: the log's timestamps moved by as much, so the clock crosses it
    assert c.observe(4_600 * S, 1_000_000 + 3_500_000) == 4_600 * S


# ------------------------------------------------------------------ per-trace facts and counters
def test_trace_facts_take_the_root_errors_and_duration_from_headers():
    f = TraceFacts(2)
    f.add_spans("cart", [span("GET /cart", 2 * S, 3 * S)])
    f.add_spans("frontend", [span("GET /", 1 * S, 4 * S, parent=None), span("x", 2 * S, 5 * S, "ERROR")])
    assert (f.spans, f.error, f.duration_ns) == (3, True, 4 * S)
    assert f.root_key == ("frontend", "GET /") and f.decisions == [None, None] and not f.decided
    assert TraceFacts(1).root_key == (NO_ROOT, "")


def facts(spans=3, error=False, duration_ms=10, root="frontend"):
    f = TraceFacts(1)
    f.add_spans(root, [span("op", 0 + 1, duration_ms * MS + 1, parent=None)])
    f.add_spans(root, [span("c", 1, 2, "ERROR" if error else "UNSET")] + [span("c", 1, 2)] * (spans - 2))
    return f


def test_config_figures_count_recall_shares_and_adjusted_counts_exactly():
    fig = ConfigFigures("candidate", "c.yaml", [100.0, 1000.0])
    keep_err = DecisionFacts(True, "errors", "status_code:ERROR", 1.0)
    keep_slow = DecisionFacts(True, "slow", "latency>=100ms", 1.0)
    keep_base = DecisionFacts(True, "baseline", "probabilistic:10%", 10.0)
    drop = DecisionFacts(False, "", "not_sampled", 0.0)
    fig.add_trace(facts(error=True, duration_ms=50), keep_err)
    fig.add_trace(facts(error=True, duration_ms=2000), drop)  # an error missed, slow at both thresholds
    fig.add_trace(facts(duration_ms=100), keep_slow)  # exactly at the threshold counts (>=)
    fig.add_trace(facts(duration_ms=99, root="shipping"), keep_base)
    fig.add_trace(facts(duration_ms=5, root="shipping"), drop)
    fig.add_kept_record(7, 12, 3000)
    fig.add_late_spans(4)
    j = fig.to_json(10.0, buckets_for(5, 9), Counter({5: 100, 9: 50}), [])
    assert (j["traces_seen"], j["spans_seen"], j["kept_traces"]) == (5, 19, 3)
    assert (j["kept_spans"], j["kept_bytes"], j["kept_spans_per_s"], j["kept_bytes_per_s"]) == (12, 3000, 1.2, 300.0)
    assert j["keep_share_by_policy"] == {"baseline": 1, "errors": 1, "slow": 1}
    assert j["per_service"] == {"frontend": {"traces": 3, "kept": 2}, "shipping": {"traces": 2, "kept": 1}}
    assert j["recall"] == {
        "error": {"seen": 2, "kept": 1},
        "slow": {"100": {"seen": 2, "kept": 1}, "1000": {"seen": 1, "kept": 0}},
    }
    assert j["adjusted_count_sum"] == 12.0


def test_timeline_buckets_cover_the_input_and_clamp_emissions_after_its_end():
    assert buckets_for(100, 159) == [(s, 1) for s in range(100, 160)]
    assert buckets_for(100, 219) == [(s, 2) for s in range(100, 220, 2)]
    assert len(buckets_for(0, 3599)) == 60
    rows = timeline(
        buckets_for(100, 103),
        Counter({100: 5, 103: 7}),
        Counter({101: 2, 140: 3}),  # emitted after the input's end → the last bucket
        {101: Counter({"errors": 1}), 140: Counter({"errors": 1, "slow": 2})},
    )
    assert rows == [
        {"t_ms": 100_000, "input_spans": 5, "kept_spans": 0, "kept_by_policy": {}},
        {"t_ms": 101_000, "input_spans": 0, "kept_spans": 2, "kept_by_policy": {"errors": 1}},
        {"t_ms": 102_000, "input_spans": 0, "kept_spans": 0, "kept_by_policy": {}},
        {"t_ms": 103_000, "input_spans": 7, "kept_spans": 3, "kept_by_policy": {"errors": 1, "slow": 2}},
    ]


def test_the_difference_lists_the_smallest_trace_ids_and_counts_the_rest():
    d = Diff(limit=2)
    for i in (9, 3, 7, 1, 5):
        d.add("only_candidate", bytes([i]) * 16, {"trace_id": (bytes([i]) * 16).hex()})
    d.add("only_current", b"\x02" * 16, {"trace_id": "02" * 16})
    j = d.to_json()
    assert [e["trace_id"] for e in j["only_candidate"]] == ["01" * 16, "03" * 16]
    assert [e["trace_id"] for e in j["only_current"]] == ["02" * 16]
    assert j["more"] == 3


def test_examples_are_an_error_the_slowest_other_trace_and_the_rarest_root_all_distinct():
    ex = Examples()
    ex.offer(b"\x05" * 16, facts(error=True), [b"e5"])
    ex.offer(b"\x04" * 16, facts(error=True), [b"e4"])
    ex.offer(b"\x01" * 16, facts(duration_ms=900), [b"s1"])
    ex.offer(b"\x02" * 16, facts(duration_ms=20, root="shipping"), [b"r2"])
    ex.offer(b"\x03" * 16, facts(duration_ms=30), [b"f3"])
    roots = Counter({("frontend", "op"): 50, ("shipping", "op"): 3})
    assert ex.choose(roots) == [
        ("error", b"\x04" * 16, [b"e4"]),
        ("slow", b"\x01" * 16, [b"s1"]),
        ("rare", b"\x02" * 16, [b"r2"]),
    ]
    # the rarest root's only kept trace is the slow example: the next rarest root gives another trace
    only = Examples()
    only.offer(b"\x01" * 16, facts(duration_ms=900, root="shipping"), [b"s1"])
    only.offer(b"\x03" * 16, facts(duration_ms=30), [b"f3"])
    assert [why for why, _, _ in only.choose(roots)] == ["slow", "rare"]
    assert only.choose(roots)[1][1] == b"\x03" * 16


def test_per_service_rows_are_bounded(monkeypatch):
    import pipeline.simulate.figures as figures

    monkeypatch.setattr(figures, "MAX_SERVICES", 3)
    fig = ConfigFigures("candidate", "c.yaml", [])
    for i in range(6):
        fig.add_trace(facts(root=f"svc{i}"), DecisionFacts(i % 2 == 0, "p", "r", 1.0))
    per = fig.to_json(1.0, [], Counter(), [])["per_service"]
    assert per == {
        "__other__": {"traces": 3, "kept": 1},
        "svc0": {"traces": 1, "kept": 1},
        "svc1": {"traces": 1, "kept": 0},
        "svc2": {"traces": 1, "kept": 1},
    }
