"""The Refinery-style rules-based sampler: operators, scopes, root., outcomes."""

import pytest

from operators.decide import DecisionEngine
from operators.policies.base import Action
from operators.policies.rules import Condition, Rule, RulesPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.trace import TraceView
from pipeline import config
from pipeline.policies import build_engine
from tests.spans import span

TID = b"\x00" * 9 + b"\xff" * 7  # maximal randomness: every draw keeps


def trace(*spans_attrs, tid=TID):
    spans = []
    for i, (svc, attrs) in enumerate(spans_attrs):
        s = span(parent=None if i == 0 else b"r" * 8, service=svc, name=f"op{i}")
        s["attributes"] = attrs
        spans.append(s)
    return TraceView(tid, spans)


@pytest.mark.parametrize(
    "op, value, attr, expected",
    [
        ("=", 500, 500, True),
        ("=", "500", 500, True),
        ("=", "a", "a", True),
        ("=", "a", "b", False),
        ("!=", "a", "b", True),
        ("!=", "a", "a", False),
        (">", 400, 500, True),
        (">", 400, "500", True),
        (">", 400, "abc", False),
        ("<", 400, 500, False),
        (">=", 500, 500, True),
        ("<=", 499, 500, False),
        ("starts-with", "/api", "/api/x", True),
        ("starts-with", "/api", "/web", False),
        ("contains", "cart", "/api/cart/1", True),
        ("does-not-contain", "cart", "/api/pay", True),
        ("does-not-contain", "cart", "/cart", False),
        ("matches", r"^/v\d+/", "/v2/items", True),
        ("matches", r"^/v\d+/", "/x/v2/", False),
        ("in", ["GET", "HEAD"], "GET", True),
        ("in", ["GET", "HEAD"], "POST", False),
        ("not-in", ["GET"], "POST", True),
        ("exists", None, "x", True),
        ("=", True, True, True),
        ("=", "true", True, True),
    ],
)
def test_operators_on_present_values(op, value, attr, expected):
    c = Condition("a", op, value)
    assert c.on_trace(trace(("svc", {"a": attr}))) is expected


@pytest.mark.parametrize(
    "op, value",
    [
        ("=", "x"),
        ("!=", "x"),
        (">", 1),
        ("does-not-contain", "x"),
        ("not-in", ["x"]),
        ("exists", None),
        ("starts-with", "x"),
    ],
)
def test_a_missing_field_meets_no_operator_but_not_exists(op, value):
    assert not Condition("a", op, value).on_trace(trace(("svc", {})))
    assert Condition("a", "not-exists").on_trace(trace(("svc", {})))
    assert not Condition("a", "not-exists").on_trace(trace(("svc", {}), ("svc", {"a": 1})))


def test_root_prefix_header_fields_and_has_root_span():
    t = trace(("frontend", {"http.route": "/cart"}), ("cart", {"http.route": "/internal"}))
    assert Condition("root.service.name", "=", "frontend").on_trace(t)
    assert not Condition("root.service.name", "=", "cart").on_trace(t)
    assert Condition("service.name", "=", "cart").on_trace(t)  # any span
    assert Condition("root.http.route", "=", "/cart").on_trace(t)
    assert not Condition("root.http.route", "=", "/internal").on_trace(t)
    assert Condition("", "has-root-span", True).on_trace(t)
    orphan = TraceView(TID, [span(parent=b"q" * 8)])
    assert Condition("", "has-root-span", False).on_trace(orphan)
    assert not Condition("root.name", "exists").on_trace(orphan)


def test_trace_scope_vs_span_scope():
    t = trace(("a", {"x": 1}), ("b", {"y": 2}))
    conds = [Condition("x", "=", 1), Condition("y", "=", 2)]
    assert Rule("t", conds, scope="trace").matches(t)
    assert not Rule("s", conds, scope="span").matches(t)
    assert Rule("s", conds, scope="span").matches(trace(("a", {"x": 1, "y": 2})))


def test_first_matching_rule_decides_with_rate_drop_or_sampler():
    policy = RulesPolicy(
        "rules",
        [
            Rule("health", [Condition("http.route", "=", "/health")], drop=True),
            Rule("errors", [Condition("status_code", "=", "ERROR")], sample_rate=1),
            Rule("checkout", [Condition("root.service.name", "=", "checkout")], sampler=StatusCodePolicy("err-only")),
            Rule("rest", [], sample_rate=20),
        ],
    )
    assert policy.can_drop
    v = policy.evaluate(trace(("svc", {"http.route": "/health"})))
    assert v.action is Action.DROP and v.reason == "rule:health:drop"
    assert policy.evaluate(trace(("checkout", {}))) is None  # handed over; that sampler has no opinion
    v = policy.evaluate(trace(("svc", {})))
    assert v.probability == pytest.approx(0.05) and v.sampled and v.reason == "rule:rest:rate=20"
    err = TraceView(TID, [span(parent=None, status="ERROR")])
    assert policy.evaluate(err).probability == 1.0
    # the first-match engine still runs a rules policy after a keep, because it can drop
    d = DecisionEngine([StatusCodePolicy("e"), policy], "first_match").decide(
        TraceView(TID, [dict(span(parent=None, status="ERROR"), attributes={"http.route": "/health"})])
    )
    assert not d.keep and d.policy == "rules"


def test_rules_from_config_validate_and_build():
    cfg = config.parse(
        {
            "sampling": {
                "mode": "first_match",
                "policies": [
                    {
                        "name": "rules",
                        "type": "rules_based",
                        "samplers": [
                            {"name": "dyn", "type": "dynamic", "sample_rate": 10, "field_list": ["service.name"]}
                        ],
                        "rules": [
                            {
                                "name": "drop-health",
                                "drop": True,
                                "conditions": [{"field": "http.route", "operator": "=", "value": "/health"}],
                            },
                            {
                                "name": "5xx",
                                "conditions": [{"field": "http.response.status_code", "operator": ">=", "value": 500}],
                            },
                            {"name": "orphans", "conditions": [{"operator": "has-root-span", "value": False}]},
                            {"name": "dyn", "sampler": "dyn"},
                        ],
                    }
                ],
            }
        }
    )
    engine = build_engine(cfg.sampling)
    assert engine.mode == "first_match" and engine.policies[0].can_drop
    for bad, words in [
        ({"name": "r", "drop": True, "sample_rate": 2}, "one outcome"),
        ({"name": "r", "sampler": "nope"}, "no sampler named"),
        ({"name": "r", "conditions": [{"field": "a", "operator": "in", "value": "x"}]}, "list value"),
        ({"name": "r", "conditions": [{"field": "a", "operator": "matches", "value": "(("}]}, "invalid regular"),
        ({"name": "r", "conditions": [{"operator": "="}]}, "needs a field"),
        ({"name": "r", "conditions": [{"field": "a", "operator": "~"}]}, "operator"),
    ]:
        with pytest.raises(config.ConfigError, match=words) as exc:
            config.parse({"sampling": {"policies": [{"name": "rules", "type": "rules_based", "rules": [bad]}]}})
        assert "sampling.policies.0(rules)" in str(exc.value) and "rules.0" in str(exc.value)
