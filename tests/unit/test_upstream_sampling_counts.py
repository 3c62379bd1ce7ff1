"""Honest counts when traces arrive already head-sampled upstream (OTEP 235 ``ot=th:T_up``).

Every arriving trace satisfies R ≥ T_up, so a tail draw R ≥ T keeps it with the per-stage
probability (2^56 − max(T, T_up)) / (2^56 − T_up). ``sampling.adjusted_count`` is cumulative (as
the ``th`` on the wire): Σ estimates the traces before any sampling; ``stage_adjusted_count``
estimates the traces that arrived. Tolerances are 4 standard errors of the Horvitz–Thompson sum,
estimated from the kept sample itself as sqrt(Σ (1 − π) / π²).
"""

import functools
import math
import random

import pytest

from operators import randomness as rnd
from operators.decide import DecisionEngine
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.trace import TraceView

ORIGIN_TRACES = 200_000
ERROR_RATE = 0.05

CONFIGS = {
    "tail looser than head": lambda: [StatusCodePolicy("errors"), ProbabilisticPolicy("base", 50)],
    "tail stricter than head": lambda: [StatusCodePolicy("errors"), ProbabilisticPolicy("base", 5)],
    "with a salted draw": lambda: [
        StatusCodePolicy("errors"),
        ProbabilisticPolicy("base", 5),
        ProbabilisticPolicy("salted", 20, hash_salt="tier2"),
    ],
}


@functools.cache
def _run(head_percent: float, config: str, seed: int):
    """Head-sample ORIGIN_TRACES random traces at ``head_percent`` (consistently, on R, writing
    its th), then tail-sample the arrivals. Returns the counts and the HT sums with their SEs."""
    t_up = rnd.threshold(head_percent / 100)
    tracestate = "ot=th:" + rnd.threshold_hex(t_up)
    engine = DecisionEngine(CONFIGS[config]())
    rng = random.Random(seed)
    arrived = 0
    cum = stage = var_cum = var_stage = 0.0
    for _ in range(ORIGIN_TRACES):
        trace_id = rng.randbytes(16)
        status = "ERROR" if rng.random() < ERROR_RATE else "UNSET"
        if rnd.randomness(trace_id) < t_up:
            continue  # the head sampler dropped it
        arrived += 1
        root = {"service": "s", "status_code": status, "parent_span_id": None, "trace_state": tracestate}
        d = engine.decide(TraceView(trace_id, [root]))
        if d.keep:
            cum += d.adjusted_count
            stage += d.stage_adjusted_count
            var_cum += (d.adjusted_count - 1) * d.adjusted_count  # (1 − π) / π²
            var_stage += (d.stage_adjusted_count - 1) * d.stage_adjusted_count
            if d.threshold is not None:  # the th written is the cumulative probability's threshold
                assert d.adjusted_count == pytest.approx(1 / rnd.probability(d.threshold), rel=1e-9)
    return arrived, cum, math.sqrt(var_cum), stage, math.sqrt(var_stage)


@pytest.mark.parametrize("head_percent", [10, 25])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_adjusted_count_is_cumulative_and_unbiased_under_upstream_head_sampling(head_percent, config):
    """The old code ignored the upstream th: at 10 % head + 50 % tail every arrival was kept
    (the tail threshold is below the head's) yet claimed 2, so Σ adjusted_count was about 2 × the
    arrivals (observed 38,853 for 19,930 arrivals of 200,000 origin traces; 97,888 for 50,220 at
    25 %) — neither the origin count nor the arrival count; deterministic keeps claimed 1."""
    arrived, cum, se, _, _ = _run(head_percent, config, seed=head_percent * 7 + len(config))
    assert arrived == pytest.approx(ORIGIN_TRACES * head_percent / 100, rel=0.05)
    assert abs(cum - ORIGIN_TRACES) <= 4 * se, (cum, se)
    assert se < 0.05 * ORIGIN_TRACES  # the tolerance is tight enough to see a bias of the old size


@pytest.mark.parametrize("head_percent", [10, 25])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_stage_adjusted_count_estimates_the_arrivals_without_bias(head_percent, config):
    """Per stage: Σ stage_adjusted_count estimates the traces that reached tailsift (the old
    code had no per-stage count; its one count was 2 × the arrivals in the 10 %/50 % case)."""
    arrived, _, _, stage, se = _run(head_percent, config, seed=head_percent * 7 + len(config))
    assert abs(stage - arrived) <= max(4 * se, 1e-6), (stage, arrived, se)


def test_a_tail_looser_than_the_head_keeps_everything_at_the_head_probability():
    """10 % head + 50 % tail: every arrival is kept; per stage π = 1, cumulative 0.1 (the old
    code claimed 0.5), and no th is added (the upstream one already says 10 %)."""
    t_up = rnd.threshold(0.10)
    trace_id = bytes(9) + (t_up + 12345).to_bytes(7, "big")  # R just above the head's threshold
    root = {"service": "s", "status_code": "UNSET", "parent_span_id": None, "trace_state": "ot=th:e666666666666"}
    d = DecisionEngine([ProbabilisticPolicy("base", 50)]).decide(TraceView(trace_id, [root]))
    assert d.keep and d.threshold is None
    assert d.adjusted_count == pytest.approx(10.0, rel=1e-6) and d.stage_adjusted_count == pytest.approx(1.0)


def test_an_upstream_th_the_trace_randomness_contradicts_is_ignored():
    """A th no consistent sampler could have written for this trace (R < T_up, or not hex) must
    not inflate its count: it is treated as absent. (Guards the new upstream handling; the old
    code ignored every th.)"""
    trace_id = bytes(16)  # R = 0
    for ts in ("ot=th:fffffffffffff", "ot=th:-1", "ot=th:1_0"):
        root = {"service": "s", "status_code": "ERROR", "parent_span_id": None, "trace_state": ts}
        d = DecisionEngine([StatusCodePolicy("errors")]).decide(TraceView(trace_id, [root]))
        assert d.adjusted_count == 1.0, ts
