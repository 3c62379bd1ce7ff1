"""The rare-path sampler: structural signatures, the sliding count-min sketch, and recall of
rare shapes at a 5 % budget vs uniform 5 % sampling."""

import random

import pytest

from operators.decide import DecisionEngine
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.rare_path import RarePathPolicy, signature
from operators.sketches.count_min import CountMin, SlidingCountMin
from operators.trace import TraceView

S = 1_000_000_000
SERVICES = [
    "frontend",
    "checkout",
    "cart",
    "payment",
    "inventory",
    "shipping",
    "recommendation",
    "email",
    "fraud",
    "db",
]


def make_shape(rng, n_spans):
    """A random call tree: (parent index or None, service, operation) per span."""
    shape = [(None, "frontend", f"GET /{rng.choice(['p', 'c', 'o', 'h'])}")]
    for i in range(1, n_spans):
        parent = rng.randrange(i)
        svc = rng.choice(SERVICES)
        shape.append((parent, svc, f"{svc}.{rng.choice(['get', 'put', 'query', 'call'])}"))
    return shape


def spans_of(shape, now):
    ids = [(i + 1).to_bytes(8, "big") for i in range(len(shape))]
    return [
        {
            "service": svc,
            "span_id": ids[i],
            "parent_span_id": None if p is None else ids[p],
            "name": name,
            "kind": "SERVER",
            "start_time_unix_nano": now,
            "end_time_unix_nano": now + 1000,
            "status_code": "UNSET",
            "trace_state": "",
        }
        for i, (p, svc, name) in enumerate(shape)
    ]


def workload(n=40_000, rate=200, seed=4):
    """99 % of traces take one of 25 common shapes (Zipf-like mix), 1 % one of 40 rare shapes."""
    rng = random.Random(seed)
    common = [make_shape(rng, rng.randint(3, 12)) for _ in range(25)]
    rare = [make_shape(rng, rng.randint(3, 12)) for _ in range(40)]
    weights = [1 / (i + 1) for i in range(len(common))]
    for i in range(n):
        now = i * S // rate
        is_rare = rng.random() < 0.01
        shape = rng.choice(rare) if is_rare else rng.choices(common, weights)[0]
        yield TraceView(rng.randbytes(16), spans_of(shape, now), now_ns=now), is_rare


def test_signature_is_structural():
    rng = random.Random(1)
    a = make_shape(rng, 6)
    assert signature(TraceView(b"1" * 16, spans_of(a, 0))) == signature(TraceView(b"2" * 16, spans_of(a, 99)))
    b = list(a)
    b[-1] = (b[-1][0], "fraud", "fraud.check")
    assert signature(TraceView(b"1" * 16, spans_of(a, 0))) != signature(TraceView(b"1" * 16, spans_of(b, 0)))
    # fan-out 3 vs 4 of the same call: same set signature; with multiplicity, 1 vs 8 differ
    one = [(None, "f", "r"), (0, "c", "x")]
    eight = one + [(0, "c", "x")] * 7
    assert signature(TraceView(b"1" * 16, spans_of(one, 0))) == signature(TraceView(b"1" * 16, spans_of(eight, 0)))
    assert signature(TraceView(b"1" * 16, spans_of(one, 0)), True) != signature(
        TraceView(b"1" * 16, spans_of(eight, 0)), True
    )


def test_count_min_never_underestimates_and_is_bounded():
    cm = CountMin(64, 4)
    rng = random.Random(2)
    truth = {}
    for _ in range(5_000):
        k = rng.getrandbits(64) if rng.random() < 0.5 else rng.choice([1, 2, 3]) * 0x9E3779B97F4A7C15
        cm.add(k)
        truth[k] = truth.get(k, 0) + 1
    assert all(cm.estimate(k) >= c for k, c in truth.items())
    assert cm.memory_bytes == 64 * 4 * 4
    sliding = SlidingCountMin(10 * S, 64, 2)
    for t in range(0, 10 * S, S // 10):
        sliding.add(7, t)
    assert sliding.estimate(7, 10 * S) == pytest.approx(100)  # window just rolled: previous counts in full
    assert sliding.estimate(7, 15 * S) == pytest.approx(50)  # half of the previous window still inside
    assert sliding.estimate(7, 30 * S) == 0  # two windows later: forgotten


def test_rare_path_recall_is_far_above_uniform_at_a_5_percent_budget():
    rare_path = RarePathPolicy("rare", keep_per_window=4, window_s=20, sketch_width=1024, sketch_depth=4)
    uniform = ProbabilisticPolicy("uniform", 5)
    n = kept = rare_total = rare_kept = uni_rare = adjusted = 0
    for view, is_rare in workload():
        v = rare_path.evaluate(view)
        n += 1
        kept += v.sampled
        adjusted += v.sampled / v.probability if v.sampled else 0
        if is_rare:
            rare_total += 1
            rare_kept += v.sampled
            uni_rare += uniform.evaluate(view).sampled
    budget = kept / n
    recall, uniform_recall = rare_kept / rare_total, uni_rare / rare_total
    print(
        f"\nrare_path: kept {budget:.2%} of {n} traces; rare recall {recall:.1%} vs uniform 5% {uniform_recall:.1%} "
        f"(×{recall / uniform_recall:.1f}); Σ adjusted / n = {adjusted / n:.3f}; sketch {rare_path.memory_bytes} B"
    )
    assert budget <= 0.05
    assert recall >= 3 * 0.05 and recall >= 3 * uniform_recall
    assert adjusted == pytest.approx(n, rel=0.05)  # honest counts, too


def test_rare_path_in_an_engine_with_a_baseline_nests_and_counts_honestly():
    engine = DecisionEngine([RarePathPolicy("rare", keep_per_window=6, window_s=20), ProbabilisticPolicy("base", 2)])
    total = n = 0
    for view, _ in workload(n=15_000):
        d = engine.decide(view)
        n += 1
        if d.keep:
            total += d.adjusted_count
            assert d.threshold is not None or d.probability == 1.0
    assert total == pytest.approx(n, rel=0.05)
