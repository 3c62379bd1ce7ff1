"""Every example config validates and builds; policy configs give errors that name the policy."""

from pathlib import Path

import pytest

from pipeline import config
from pipeline.policies import build_engine

DEPLOY_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "config").glob("*.yaml"))


def test_there_are_example_configs():
    assert len(DEPLOY_CONFIGS) >= 3


@pytest.mark.parametrize("path", DEPLOY_CONFIGS, ids=lambda p: p.name)
def test_example_config_loads_and_builds(path):
    cfg = config.load(path)
    engine = build_engine(cfg.sampling)
    assert engine.policies


ALL_TYPES = [
    {"name": "a", "type": "always_sample"},
    {"name": "b", "type": "status_code", "status_codes": ["ERROR", "UNSET"]},
    {"name": "c", "type": "latency", "threshold_ms": 10, "upper_threshold_ms": 20},
    {"name": "d", "type": "probabilistic", "sampling_percentage": 1, "hash_salt": "x"},
    {
        "name": "e",
        "type": "and",
        "policies": [
            {"name": "e1", "type": "string_attribute", "key": "k", "values": ["^a"], "enabled_regex_matching": True},
            {"name": "e2", "type": "numeric_attribute", "key": "n", "min_value": 1, "invert_match": True},
        ],
    },
    {"name": "e0", "type": "string_attribute", "key": "k", "values": ["a"]},
    {"name": "f", "type": "numeric_attribute", "key": "k", "min_value": 1},
    {"name": "g", "type": "boolean_attribute", "key": "k", "value": True},
    {"name": "h", "type": "span_count", "min_spans": 2, "max_spans": 9},
    {"name": "i", "type": "trace_state", "key": "shop", "values": ["vip"]},
    {"name": "j", "type": "rate_limiting", "spans_per_second": 100},
    {"name": "k", "type": "bytes_limiting", "bytes_per_second": 1e6, "burst_capacity": 2e6},
    {
        "name": "l",
        "type": "and",
        "policies": [{"name": "l1", "type": "status_code"}, {"name": "l2", "type": "latency", "threshold_ms": 5}],
    },
    {"name": "m", "type": "not", "policy": {"name": "m1", "type": "status_code"}},
    {"name": "n", "type": "drop", "policies": [{"name": "n1", "type": "span_count", "min_spans": 5000}]},
    {
        "name": "o",
        "type": "composite",
        "max_total_spans_per_second": 1000,
        "policy_order": ["o2", "o1"],
        "policies": [{"name": "o1", "type": "always_sample"}, {"name": "o2", "type": "status_code"}],
        "rate_allocation": [{"policy": "o2", "percent": 60}],
    },
    {"name": "p", "type": "rules_based", "rules": [{"name": "r", "sample_rate": 10}]},
    {"name": "q", "type": "dynamic", "sample_rate": 10, "field_list": ["service.name"]},
    {"name": "r", "type": "ema_dynamic", "goal_sample_rate": 10, "field_list": ["service.name"]},
    {"name": "s", "type": "ema_throughput", "goal_throughput_per_sec": 10, "field_list": ["service.name"]},
    {"name": "t", "type": "windowed_throughput", "goal_throughput_per_sec": 10, "field_list": ["service.name"]},
    {"name": "u", "type": "rare_path"},
]


def test_every_policy_type_validates_and_builds():
    cfg = config.parse({"sampling": {"policies": ALL_TYPES, "mode": "first_match", "dry_run": True}})
    engine = build_engine(cfg.sampling)
    assert len(engine.policies) == len(ALL_TYPES) and cfg.sampling.dry_run


@pytest.mark.parametrize(
    "policy, where, words",
    [
        ({"name": "x", "type": "numeric_attribute", "key": "k"}, "sampling.policies.0(x)", "min_value, max_value"),
        ({"name": "x", "type": "rate_limiting"}, "sampling.policies.0(x)", "exactly one"),
        (
            {
                "name": "x",
                "type": "composite",
                "max_total_spans_per_second": 1,
                "policies": [{"name": "a", "type": "always_sample"}],
                "rate_allocation": [{"policy": "zz", "percent": 10}],
            },
            "sampling.policies.0(x)",
            "not one of",
        ),
        (
            {"name": "x", "type": "and", "policies": [{"name": "y", "type": "latency", "threshold_ms": -1}]},
            "sampling.policies.0(x).policies.0(y).threshold_ms",
            "greater than 0",
        ),
        ({"name": "x", "type": "dynamic", "sample_rate": 10}, "sampling.policies.0(x).field_list", "required"),
        (
            {
                "name": "x",
                "type": "windowed_throughput",
                "goal_throughput_per_sec": 1,
                "field_list": ["a"],
                "update_frequency_s": 10,
                "lookback_frequency_s": 5,
            },
            "sampling.policies.0(x)",
            "lookback",
        ),
        ({"name": "x", "type": "span_count", "min_spans": 5, "max_spans": 2}, "sampling.policies.0(x)", "max_spans"),
        (
            {"name": "x", "type": "probabilistic", "sampling_percentage": 5, "salt": "a"},
            "sampling.policies.0(x).salt",
            "unknown key",
        ),
    ],
)
def test_policy_errors_name_the_policy_and_key(policy, where, words):
    with pytest.raises(config.ConfigError) as exc:
        config.parse({"sampling": {"policies": [policy]}}, "bad.yaml")
    assert where in str(exc.value) and words in str(exc.value)


def test_mode_is_validated():
    with pytest.raises(config.ConfigError, match="sampling.mode"):
        config.parse({"sampling": {"mode": "sometimes"}})
