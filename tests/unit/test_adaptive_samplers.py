"""Rate-aware and adaptive samplers: convergence to their goals, honest adjusted counts,
token-bucket bounds, bounded state. Time is passed in (TraceView.now_ns): deterministic."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.adaptive import OVERFLOW_KEY, allocate
from operators.decide import DecisionEngine
from operators.policies.bytes_limiting import BytesLimitingPolicy
from operators.policies.composite import CompositePolicy
from operators.policies.dynamic import DynamicPolicy
from operators.policies.ema_dynamic import EmaDynamicPolicy
from operators.policies.ema_throughput import EmaThroughputPolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.rate_limiting import RateLimitingPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.policies.windowed_throughput import WindowedThroughputPolicy
from operators.rate import RateEstimator, TokenBucket
from operators.trace import TraceView
from tests.spans import span

S = 1_000_000_000


def stream(rate_per_s, seconds, keys=(("a", 1.0),), seed=1, spans=1, t0=0):
    """(view, key) for a steady synthetic stream: one root span per trace, service = key."""
    rng = random.Random(seed)
    names, weights = zip(*keys)
    step = S / rate_per_s
    for i in range(int(rate_per_s * seconds)):
        key = rng.choices(names, weights)[0]
        now = t0 + int(i * step)
        sp = [span(now, now + 1000, parent=None, service=key)] + [
            span(now, now + 1000, service=key) for _ in range(spans - 1)
        ]
        yield TraceView(rng.randbytes(16), sp, now_ns=now), key


def run(policy, rate, seconds, **kw):
    kept_at, total_adj, by_key_adj, true_by_key = [], 0.0, Counter(), Counter()
    for view, key in stream(rate, seconds, **kw):
        v = policy.evaluate(view)
        true_by_key[key] += 1
        if v is not None and v.sampled:
            kept_at.append(view.now_ns)
            total_adj += 1 / v.probability
            by_key_adj[key] += 1 / v.probability
    return kept_at, by_key_adj, true_by_key


def kept_rate(kept_at, start_s, end_s):
    return sum(start_s * S <= t < end_s * S for t in kept_at) / (end_s - start_s)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EmaThroughputPolicy("ema", 40, ["service.name"], adjustment_interval_s=2),
        lambda: WindowedThroughputPolicy("win", 40, ["service.name"], update_frequency_s=1, lookback_frequency_s=5),
        lambda: RateLimitingPolicy("rl", traces_per_second=40),
    ],
    ids=["ema_throughput", "windowed_throughput", "rate_limiting"],
)
def test_throughput_samplers_converge_within_10_percent_and_stay_honest(make):
    policy = make()
    keys = (("checkout", 0.6), ("cart", 0.3), ("rare", 0.1))
    kept_at, adj, true = run(policy, 400, 40, keys=keys)
    r = kept_rate(kept_at, 10, 40)  # after warm-up
    assert r == pytest.approx(40, rel=0.10), r
    for key in true:  # Σ adjusted counts ≈ traffic, per key (rates change over time: still honest)
        assert adj[key] == pytest.approx(true[key], rel=0.12), key


def test_throughput_sampler_follows_a_load_change():
    policy = EmaThroughputPolicy("ema", 30, ["service.name"], adjustment_interval_s=1, burst_detection_delay=100)
    a = run(policy, 300, 20)[0]
    b = run(policy, 900, 20, t0=20 * S, seed=2)[0]
    assert kept_rate(a, 5, 20) == pytest.approx(30, rel=0.1)
    assert kept_rate(b, 28, 40) == pytest.approx(30, rel=0.1)


def test_dynamic_sampler_favours_rare_keys_and_hits_its_goal_rate():
    policy = DynamicPolicy("dyn", 20, ["service.name"], clear_frequency_s=5)
    keys = (("big", 0.95), ("small", 0.045), ("tiny", 0.005))
    kept_at, adj, true = run(policy, 1000, 30, keys=keys)
    after = [t for t in kept_at if t >= 5 * S]
    assert len(after) / (1000 * 25) == pytest.approx(1 / 20, rel=0.15)
    rates = policy.rates
    assert rates["tiny"] < rates["small"] < rates["big"]
    assert rates["tiny"] == 1.0  # 25 traces a window: all kept
    for key in true:
        assert adj[key] == pytest.approx(true[key], rel=0.1), key


def test_ema_dynamic_burst_recomputes_early_and_keys_are_bounded():
    policy = EmaDynamicPolicy(
        "ema", 10, ["service.name"], adjustment_interval_s=10, max_keys=5, burst_detection_delay=2
    )
    keys = tuple((f"k{i}", 1.0) for i in range(50))
    run(policy, 100, 30, keys=keys)
    assert len(policy.ema) <= 5 and OVERFLOW_KEY in policy.ema
    bursts = policy.bursts
    run(policy, 2000, 3, t0=30 * S, keys=keys)  # 20x the load
    assert policy.bursts > bursts


def test_allocate_meets_the_goal_and_favours_rare():
    counts = {"a": 10_000, "b": 1_000, "c": 10, "d": 1}
    rates = allocate(counts, 500)
    kept = sum(c / rates[k] for k, c in counts.items())
    assert kept == pytest.approx(500, rel=0.02)
    assert rates["d"] == rates["c"] == 1.0 and rates["a"] > rates["b"] > 1.0
    assert allocate({"a": 5}, 10) == {"a": 1.0}
    assert allocate({}, 10) == {}


def test_rate_limiting_by_spans_and_unsampled_draws_in_bursts_are_guarded():
    policy = RateLimitingPolicy("rl", spans_per_second=200)
    kept_at, _, _ = run(policy, 100, 20, spans=10)  # 1000 spans/s offered
    assert kept_rate(kept_at, 5, 20) * 10 == pytest.approx(200, rel=0.1)
    with pytest.raises(ValueError):
        RateLimitingPolicy("x", spans_per_second=1, traces_per_second=1)


def test_bytes_limiting_keeps_its_byte_rate():
    policy = BytesLimitingPolicy("b", bytes_per_second=2_000)  # 10 KB/s offered (50 B traces)
    kept_bytes = 0
    for view, _ in stream(200, 20):
        v = policy.evaluate(view)
        if v.sampled and view.now_ns >= 5 * S:
            kept_bytes += view.size_bytes
    assert kept_bytes / 15 == pytest.approx(2_000, rel=0.1)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(0.5, 1e4),
    burst=st.floats(1, 1e4),
    events=st.lists(st.tuples(st.integers(0, 3 * S), st.floats(0.01, 500)), min_size=1, max_size=60),
)
def test_token_bucket_never_exceeds_rate_times_time_plus_burst(rate, burst, events):
    bucket = TokenBucket(rate, burst)
    t, start, granted = 0, None, 0.0
    for dt, n in events:
        t += dt
        start = t if start is None else start
        if bucket.take(n, t):
            granted += n
        assert granted <= rate * (t - start) / S + burst + 1e-6


def test_rate_estimator_tracks_a_steady_rate():
    est = RateEstimator(S, 0.5)
    for i in range(5000):
        est.add(1, i * S // 500)
    assert est.rate(10 * S) == pytest.approx(500, rel=0.02)


def test_composite_shares_the_span_budget_in_order():
    errors = StatusCodePolicy("errors")
    rest = ProbabilisticPolicy("rest", 100)
    policy = CompositePolicy("c", [errors, rest], [60.0, 40.0])
    rng = random.Random(9)
    kept = Counter()
    step = S // 500
    for i in range(500 * 20):
        now = i * step
        status = "ERROR" if rng.random() < 0.2 else "OK"
        v = policy.evaluate(TraceView(rng.randbytes(16), [span(now, now + 1, status, parent=None)], now_ns=now))
        if v.sampled and now >= 5 * S:
            kept[v.reason.split(":")[1]] += 1
    assert kept["errors"] / 15 == pytest.approx(60, rel=0.12)
    assert kept["rest"] / 15 == pytest.approx(40, rel=0.12)


def test_adaptive_samplers_are_deterministic_for_the_same_arrivals():
    def decisions():
        engine = DecisionEngine([EmaThroughputPolicy("e", 20, ["service.name"], adjustment_interval_s=1)])
        return [engine.decide(v) for v, _ in stream(200, 5, keys=(("a", 1), ("b", 1)))]

    assert decisions() == decisions()
