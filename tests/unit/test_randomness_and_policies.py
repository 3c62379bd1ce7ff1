import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators import randomness
from operators.decide import NOT_SAMPLED, DecisionEngine
from operators.policies.base import Action, Policy, Verdict
from operators.policies.latency import LatencyPolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.trace import TraceView
from tests.spans import span

trace_ids = st.binary(min_size=16, max_size=16)
probs = st.floats(min_value=1e-6, max_value=1.0)


def test_threshold_hex_matches_otep_235_examples():
    assert randomness.threshold_hex(randomness.threshold(1.0)) == "0"
    assert randomness.threshold_hex(randomness.threshold(0.5)) == "8"
    assert randomness.threshold_hex(randomness.threshold(0.25)) == "c"
    assert randomness.threshold_hex(randomness.threshold(0.75)) == "4"


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_threshold_rejects_impossible_probabilities(bad):
    with pytest.raises(ValueError):
        randomness.threshold(bad)


@given(trace_ids, probs, probs)
def test_consistent_sampling_lower_rate_keeps_a_subset(tid, p1, p2):
    low, high = sorted((p1, p2))
    if randomness.is_kept(tid, randomness.threshold(low)):
        assert randomness.is_kept(tid, randomness.threshold(high))


def test_probabilistic_share_is_close_to_the_percentage():
    policy = ProbabilisticPolicy("p", 10)
    rng = __import__("random").Random(7)
    ids = [rng.randbytes(16) for _ in range(20_000)]
    # a probabilistic policy applies to every trace; ``sampled`` is this trace's draw
    kept = sum(policy.evaluate(TraceView(t, [span()])).sampled for t in ids)
    assert 1_800 < kept < 2_200  # 10% ± ~7 standard deviations
    v = policy.evaluate(TraceView(next(t for t in ids if policy.evaluate(TraceView(t, [span()])).sampled), [span()]))
    assert v.probability == pytest.approx(0.1)


def test_status_code_policy_matches_error_spans_only():
    p = StatusCodePolicy("errors")
    assert p.evaluate(TraceView(b"t" * 16, [span(status="OK"), span(status="UNSET")])) is None
    v = p.evaluate(TraceView(b"t" * 16, [span(status="OK"), span(status="ERROR")]))
    assert v.action is Action.KEEP and v.probability == 1.0
    ok = StatusCodePolicy("oks", frozenset({"OK"}))
    assert ok.evaluate(TraceView(b"t" * 16, [span(status="OK")])) is not None


def test_latency_policy_uses_whole_trace_duration_and_the_collectors_bounds():
    """As the OTel Collector: without an upper bound [lower, ∞); with one (lower, upper]. The old
    code used [lower, upper): a trace of exactly the upper bound was not kept (the Collector keeps
    it) and one of exactly the lower bound was (the Collector does not)."""
    p = LatencyPolicy("slow", threshold_ms=100, upper_threshold_ms=1000)
    # two spans, each 60 ms, 100 ms apart end to end
    t = TraceView(b"t" * 16, [span(0, 60_000_000), span(40_000_000, 100_000_000)])
    assert p.evaluate(t) is None  # exactly the lower bound: excluded
    assert p.evaluate(TraceView(b"t" * 16, [span(0, 100_000_001)])) is not None
    assert p.evaluate(TraceView(b"t" * 16, [span(0, 1_000_000_000)])) is not None  # exactly the upper bound: kept
    assert p.evaluate(TraceView(b"t" * 16, [span(0, 1_000_000_001)])) is None
    open_ended = LatencyPolicy("slow", threshold_ms=100)
    assert open_ended.evaluate(t) is not None  # no upper bound: exactly the threshold counts
    assert open_ended.evaluate(TraceView(b"t" * 16, [span(0, 99_999_999)])) is None


class _Fixed(Policy):
    def __init__(self, name, verdict):
        self.name, self.verdict = name, verdict

    def evaluate(self, trace):
        return self.verdict


class _Broken(Policy):
    name = "broken"

    def evaluate(self, trace):
        raise RuntimeError("bad rule")


def _t():
    return TraceView(os.urandom(16), [span()])


def test_drop_wins_over_any_keep():
    engine = DecisionEngine([_Fixed("keep", Verdict(Action.KEEP, "k")), _Fixed("deny", Verdict(Action.DROP, "d"))])
    d = engine.decide(_t())
    assert not d.keep and d.policy == "deny"


def test_deterministic_keep_beats_probabilistic_for_attribution_and_count():
    engine = DecisionEngine(
        [_Fixed("sample", Verdict(Action.KEEP, "p", 0.1)), _Fixed("errors", Verdict(Action.KEEP, "e"))]
    )
    d = engine.decide(_t())
    assert d.keep and d.policy == "errors" and d.adjusted_count == 1.0


def test_probabilistic_keep_carries_inverse_probability():
    d = DecisionEngine([_Fixed("sample", Verdict(Action.KEEP, "p", 0.25))]).decide(_t())
    assert d.keep and d.adjusted_count == pytest.approx(4.0)


def test_no_match_is_not_sampled_and_errors_are_counted_not_raised():
    engine = DecisionEngine([_Broken(), _Fixed("none", None)])
    assert engine.decide(_t()) == NOT_SAMPLED
    assert engine.policy_errors == {"broken": 1}
