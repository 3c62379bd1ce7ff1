"""Keep probabilities when one verdict needs draws on several randomness sources (``and``,
``composite`` with a salted sub-policy) beside other policies: π must be exact."""

import itertools
import random

import pytest

from operators import keep_probability as kp
from operators.decide import DecisionEngine
from operators.policies.and_ import AndPolicy
from operators.policies.composite import CompositePolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.trace import TraceView
from tests.spans import span


def _mixed_and_beside_plain():
    return DecisionEngine(
        [
            AndPolicy("both", [ProbabilisticPolicy("r50", 50), ProbabilisticPolicy("s50", 50, hash_salt="s")]),
            ProbabilisticPolicy("plain", 50),
        ]
    )


def test_and_of_r_and_salted_draws_beside_a_plain_draw_has_the_true_probability():
    """Kept iff R ≥ T50 (the and's keep implies the plain one's), so π = 0.5. The old code gave
    the and an independent source of its own and claimed π = 1 − 0.5 · 0.75 = 0.625."""
    engine = _mixed_and_beside_plain()
    rng = random.Random(8)
    kept = [
        d for d in (engine.decide(TraceView(rng.randbytes(16), [span(parent=None)])) for _ in range(2000)) if d.keep
    ]
    assert kept and all(d.probability == pytest.approx(0.5) for d in kept)


def test_sum_of_adjusted_counts_is_unbiased_with_mixed_sources():
    """40,000 traces; the old code's Σ adjusted was −20 % (π 0.625 claimed for a 0.5 event).
    The HT sum's SE here is sqrt(N · (1 − π)/π) = 200, so 4σ = 800 (2 %)."""
    engine = _mixed_and_beside_plain()
    rng = random.Random(80)
    n = 40_000
    total = sum(
        d.adjusted_count
        for d in (engine.decide(TraceView(rng.randbytes(16), [span(parent=None)])) for _ in range(n))
        if d.keep
    )
    assert abs(total - n) <= 800, total


def test_composite_with_a_salted_sub_policy_beside_a_plain_draw_counts_without_bias():
    """composite's salted 50 % sub-policy under a span budget (b ≈ 0.6, a draw on R) beside a
    plain 50 % draw: the composite keep is S ≥ T50 ∧ R ≥ T_b, which overlaps the plain R ≥ T50,
    so π ≈ 0.5 + 0.5 · 0.1 = 0.55. The old code labelled the composite verdict an independent
    source and claimed 1 − 0.5 · (1 − 0.3) = 0.65: Σ adjusted −15 %. 1,000 one-span traces/s for
    40 s; the HT sum's SE is ≈ sqrt(N · (1 − π)/π) ≈ 180, tolerance 4σ = 720."""
    comp = CompositePolicy("comp", [ProbabilisticPolicy("s50", 50, hash_salt="s")], [300.0])
    engine = DecisionEngine([comp, ProbabilisticPolicy("plain", 50)])
    rng = random.Random(81)
    n, total = 40_000, 0.0
    for i in range(n):
        d = engine.decide(TraceView(rng.randbytes(16), [span(parent=None)], now_ns=(i + 1) * 1_000_000))
        if d.keep:
            total += d.adjusted_count
    assert comp.guard_drops == 0  # the hard cap did not bind: the draws alone decided
    assert abs(total - n) <= 720, total


@pytest.mark.parametrize("seed", range(20))
def test_union_probability_matches_enumeration_on_a_grid(seed):
    """Against brute force: each source's value on a 20-point grid, events random conjunctions."""
    rng = random.Random(seed)
    sources = ["", "a", "b"]
    events = []
    for _ in range(rng.randint(1, 4)):
        chosen = rng.sample(sources, rng.randint(1, 3))
        events.append({s: rng.randint(0, 20) / 20 for s in chosen})
    grid = [(i + 0.5) / 20 for i in range(20)]  # v: kept by a draw with p iff v < p
    hits = sum(
        any(all(v[sources.index(s)] < p for s, p in e.items()) for e in events)
        for v in itertools.product(grid, repeat=3)
    )
    assert kp.union_probability(events) == pytest.approx(hits / 20**3)
