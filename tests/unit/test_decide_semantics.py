"""The decision engine: drop wins, any-match vs first-match, honest probabilities, errors."""

import os
import random

import pytest

from operators import randomness
from operators.decide import ANY_MATCH, FIRST_MATCH, NOT_SAMPLED, DecisionEngine
from operators.policies.always_sample import AlwaysSamplePolicy
from operators.policies.and_ import AndPolicy
from operators.policies.base import Action, Policy, Verdict
from operators.policies.drop import DropPolicy
from operators.policies.latency import LatencyPolicy
from operators.policies.not_ import NotPolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.trace import TraceView
from tests.spans import span


class Fixed(Policy):
    def __init__(self, name, verdict, can_drop=False):
        self.name, self.verdict, self.can_drop, self.calls = name, verdict, can_drop, 0

    def evaluate(self, trace):
        self.calls += 1
        return self.verdict


def t(status="UNSET", tid=None):
    return TraceView(tid or os.urandom(16), [span(status=status, parent=None)])


KEEP = Verdict(Action.KEEP, "k")
MISS = Verdict(Action.KEEP, "p", 0.1, sampled=False)


def test_drop_wins_in_both_modes_even_after_a_keep():
    for mode in (ANY_MATCH, FIRST_MATCH):
        engine = DecisionEngine([Fixed("keep", KEEP), Fixed("deny", Verdict(Action.DROP, "d"), can_drop=True)], mode)
        d = engine.decide(t())
        assert not d.keep and d.policy == "deny" and d.reason == "d"


def test_first_match_lets_the_first_applying_policy_decide_alone():
    later = Fixed("later", KEEP)
    engine = DecisionEngine([Fixed("none", None), Fixed("sample", MISS), later], FIRST_MATCH)
    d = engine.decide(t())
    assert not d.keep and d.policy == "sample" and d.reason == "not_sampled"
    assert later.calls == 0  # not evaluated: it cannot drop
    d = DecisionEngine([Fixed("sample", Verdict(Action.KEEP, "p", 0.25)), Fixed("all", KEEP)], FIRST_MATCH).decide(t())
    assert d.keep and d.policy == "sample" and d.adjusted_count == pytest.approx(4.0)
    assert d.threshold == randomness.threshold(0.25)


def test_any_match_keeps_if_any_picks_and_counts_the_union_probability():
    # an unsampled 10 % policy and a sampled 25 % one on the same randomness: π = 0.25
    d = DecisionEngine([Fixed("a", MISS), Fixed("b", Verdict(Action.KEEP, "b", 0.25))]).decide(t())
    assert d.keep and d.policy == "b" and d.probability == pytest.approx(0.25)
    # independent sources: π = 1 − 0.9 · 0.75
    d = DecisionEngine(
        [Fixed("a", Verdict(Action.KEEP, "a", 0.1, True, "salt:x")), Fixed("b", Verdict(Action.KEEP, "b", 0.25, False))]
    ).decide(t())
    assert d.keep and d.policy == "a" and d.probability == pytest.approx(1 - 0.9 * 0.75)
    assert d.threshold is None  # a salted draw: no th consistent with R can be written
    # a deterministic rule makes π = 1 and takes the attribution
    d = DecisionEngine([Fixed("p", Verdict(Action.KEEP, "p", 0.1)), Fixed("errors", KEEP)]).decide(t())
    assert d.policy == "errors" and d.adjusted_count == 1.0 and d.threshold is None
    # nothing picked
    assert DecisionEngine([Fixed("a", MISS)]).decide(t()) == NOT_SAMPLED


def test_ties_go_to_the_earlier_policy():
    d = DecisionEngine([Fixed("one", KEEP), Fixed("two", KEEP)]).decide(t())
    assert d.policy == "one"


def test_policy_errors_are_counted_and_mean_no_opinion():
    class Broken(Policy):
        name = "broken"

        def evaluate(self, trace):
            raise KeyError("boom")

    for mode in (ANY_MATCH, FIRST_MATCH):
        engine = DecisionEngine([Broken(), Fixed("p", Verdict(Action.KEEP, "p", 0.5))], mode)
        d = engine.decide(t())
        assert d.policy == "p" and d.probability == 0.5
        assert engine.policy_errors == {"broken": 1}


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError):
        DecisionEngine([], "sometimes")


def test_combinators_and_not_drop():
    err = StatusCodePolicy("err")
    slow = LatencyPolicy("slow", 5)
    both = AndPolicy("both", [err, slow])
    assert both.evaluate(TraceView(b"x" * 16, [span(0, 10_000_000, "ERROR")])).probability == 1.0
    assert both.evaluate(TraceView(b"x" * 16, [span(0, 1_000_000, "ERROR")])) is None
    half = AndPolicy("half", [err, ProbabilisticPolicy("p", 50), ProbabilisticPolicy("q", 20)])
    v = half.evaluate(TraceView(b"x" * 16, [span(status="ERROR")]))
    assert v.probability == pytest.approx(0.2)  # nested draws: the smaller probability
    ok = NotPolicy("ok", err)
    assert ok.evaluate(t("ERROR")) is None and ok.evaluate(t("OK")).probability == 1.0
    deny = DropPolicy("deny", [err, NotPolicy("fast", slow)])
    engine = DecisionEngine([AlwaysSamplePolicy("all"), deny])
    assert not engine.decide(TraceView(b"x" * 16, [span(0, 1_000_000, "ERROR")])).keep  # fast error: dropped
    assert engine.decide(TraceView(b"x" * 16, [span(0, 9_000_000, "ERROR")])).keep


def test_decisions_keep_the_probability_honest_under_overlapping_policies():
    """Two overlapping probabilistic policies (10 % unsalted, 20 % salted) plus a 30 % on a
    service: Σ adjusted counts over kept traces ≈ the number of traces."""
    rng = random.Random(5)
    engine = DecisionEngine(
        [
            ProbabilisticPolicy("a", 10),
            ProbabilisticPolicy("b", 20, "s"),
            AndPolicy("c", [StatusCodePolicy("ok", frozenset({"OK"})), ProbabilisticPolicy("c30", 30)]),
        ]
    )
    n, total = 40_000, 0.0
    for i in range(n):
        d = engine.decide(TraceView(rng.randbytes(16), [span(status="OK" if i % 3 == 0 else "UNSET", parent=None)]))
        if d.keep:
            total += d.adjusted_count
    assert total == pytest.approx(n, rel=0.03)
