"""Configs pasted from an OTel Collector tail_sampling block behave as there, or are refused with
a message that says how tailsift differs (Collector v0.160.0 sources)."""

import random

import pytest

from operators.trace import TraceView
from pipeline import config
from pipeline.policies import build_engine
from tests.spans import span

PROB_FIRST_COMPOSITE = {
    "name": "comp",
    "type": "composite",
    "max_total_spans_per_second": 1e9,
    "policy_order": ["ten-percent", "errors"],
    "policies": [
        {"name": "errors", "type": "status_code"},
        {"name": "ten-percent", "type": "probabilistic", "sampling_percentage": 10},
    ],
}


def _error_traces(n, seed):
    rng = random.Random(seed)
    return [TraceView(rng.randbytes(16), [span(status="ERROR", parent=None)], now_ns=i + 1) for i in range(n)]


def test_a_draw_before_another_composite_sub_policy_is_refused():
    """The old code accepted it and gave every trace to the 10 % draw (it applies to all): only the
    error traces the draw picked were kept (observed 106 of 1,000); the Collector keeps them all
    (its composite moves on when a sub-policy does not sample)."""
    with pytest.raises(config.ConfigError) as err:
        config.parse({"sampling": {"policies": [PROB_FIRST_COMPOSITE]}})
    msg = str(err.value)
    assert "sampling.policies.0(comp)" in msg and "'ten-percent'" in msg and "first sub-policy that *samples*" in msg


def test_conditions_first_composite_keeps_what_the_collectors_would():
    cfg = {**PROB_FIRST_COMPOSITE, "policy_order": ["errors", "ten-percent"]}
    engine = build_engine(config.parse({"sampling": {"policies": [cfg]}}).sampling)
    kept = sum(engine.decide(t).keep for t in _error_traces(1000, 13))
    assert kept == 1000


def test_a_drop_inside_a_composite_is_refused():
    """The Collector's composite ignores a drop sub-policy; tailsift's stopped at it."""
    comp = {
        "name": "comp",
        "type": "composite",
        "max_total_spans_per_second": 100,
        "policies": [
            {"name": "no-health", "type": "drop", "policies": [{"name": "h", "type": "status_code"}]},
            {"name": "all", "type": "always_sample"},
        ],
    }
    with pytest.raises(config.ConfigError, match="'no-health' is a drop"):
        config.parse({"sampling": {"policies": [comp]}})


@pytest.mark.parametrize(
    "policy",
    [
        {"name": "inv", "type": "string_attribute", "key": "http.route", "values": ["/health"], "invert_match": True},
        {"name": "inv", "type": "numeric_attribute", "key": "n", "min_value": 5, "invert_match": True},
        {"name": "inv", "type": "boolean_attribute", "key": "b", "value": True, "invert_match": True},
    ],
)
def test_top_level_invert_match_is_refused_with_the_collector_difference(policy):
    """The old code accepted it as "a match means no opinion": with errors beside it, a matching
    error trace was kept (observed 100 of 100); the Collector's inverted match vetoes it."""
    with pytest.raises(config.ConfigError) as err:
        config.parse({"sampling": {"policies": [{"name": "errors", "type": "status_code"}, policy]}})
    msg = str(err.value)
    assert "sampling.policies.1(inv).invert_match" in msg and "vetoes" in msg and "type: drop" in msg


def test_invert_match_inside_and_reads_as_in_the_collector():
    """Inside ``and`` an inverted match that matches is "not sampled" in the Collector and "does not
    apply" here: the same result, so it is accepted."""
    cfg = {
        "name": "errors-not-health",
        "type": "and",
        "policies": [
            {"name": "e", "type": "status_code"},
            {"name": "h", "type": "string_attribute", "key": "name", "values": ["health"], "invert_match": True},
        ],
    }
    engine = build_engine(config.parse({"sampling": {"policies": [cfg]}}).sampling)
    assert engine.decide(TraceView(b"\x01" * 16, [span(status="ERROR", parent=None, name="checkout")])).keep
    assert not engine.decide(TraceView(b"\x01" * 16, [span(status="ERROR", parent=None, name="health")])).keep


@pytest.mark.parametrize(
    "sub",
    [
        {"name": "p", "type": "probabilistic", "sampling_percentage": 10},
        {"name": "p", "type": "rate_limiting", "spans_per_second": 10},
        {"name": "p", "type": "and", "policies": [{"name": "q", "type": "probabilistic", "sampling_percentage": 10}]},
    ],
)
def test_drop_with_a_draw_is_refused(sub):
    """The old code used the probabilistic sub-policy as a condition that every trace meets, so
    drop(errors, 10 %) dropped every error trace (observed 1,000 of 1,000); the Collector drops
    the 10 % its draw picks."""
    drop = {"name": "d", "type": "drop", "policies": [{"name": "e", "type": "status_code"}, sub]}
    with pytest.raises(config.ConfigError) as err:
        config.parse({"sampling": {"policies": [{"name": "all", "type": "always_sample"}, drop]}})
    assert "sampling.policies.1(d)" in str(err.value) and "drops only the share" in str(err.value)


def test_not_of_a_draw_is_refused():
    """The old code accepted not(10 %) and kept nothing (a draw applies to every trace); the
    Collector's not inverts the draw and keeps 90 %."""
    policy = {"name": "n", "type": "not", "policy": {"name": "p", "type": "probabilistic", "sampling_percentage": 10}}
    with pytest.raises(config.ConfigError, match="the OTel Collector's not inverts"):
        config.parse({"sampling": {"policies": [policy]}})
