"""Build sampling policy operators from their validated config (one entry per policy type)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from operators.decide import DecisionEngine
from operators.policies.always_sample import AlwaysSamplePolicy
from operators.policies.and_ import AndPolicy
from operators.policies.base import Policy
from operators.policies.boolean_attribute import BooleanAttributePolicy
from operators.policies.bytes_limiting import BytesLimitingPolicy
from operators.policies.composite import CompositePolicy
from operators.policies.drop import DropPolicy
from operators.policies.dynamic import DynamicPolicy
from operators.policies.ema_dynamic import EmaDynamicPolicy
from operators.policies.ema_throughput import EmaThroughputPolicy
from operators.policies.latency import LatencyPolicy
from operators.policies.not_ import NotPolicy
from operators.policies.numeric_attribute import NumericAttributePolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.rare_path import RarePathPolicy
from operators.policies.rate_limiting import RateLimitingPolicy
from operators.policies.rules import Condition, Rule, RulesPolicy
from operators.policies.span_count import SpanCountPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.policies.string_attribute import StringAttributePolicy
from operators.policies.trace_state import TraceStatePolicy
from operators.policies.windowed_throughput import WindowedThroughputPolicy
from pipeline import config as c


def _rules(cfg: c.RulesBasedPolicyConfig) -> RulesPolicy:
    samplers = {s.name: build_policy(s) for s in cfg.samplers}
    rules = [
        Rule(
            r.name,
            [Condition(k.field or "", k.operator, k.value) for k in r.conditions],
            r.sample_rate,
            r.drop,
            samplers.get(r.sampler) if r.sampler else None,
            r.scope,
        )
        for r in cfg.rules
    ]
    return RulesPolicy(cfg.name, rules)


def _ema_args(cfg: c.EmaDynamicPolicyConfig | c.EmaThroughputPolicyConfig) -> tuple:
    """The keyword-free tail both EMA samplers take after their goal."""
    return (
        cfg.field_list,
        cfg.adjustment_interval_s,
        cfg.weight,
        cfg.age_out_value,
        cfg.burst_multiple,
        cfg.burst_detection_delay,
        cfg.max_keys,
    )


# Policy type (the config's ``type`` tag) → how its operator is built from its validated config.
# tests/unit/test_policy_contract.py checks that every type in the config union has an entry here.
BUILDERS: dict[str, Callable[[Any], Policy]] = {
    "status_code": lambda cfg: StatusCodePolicy(cfg.name, frozenset(cfg.status_codes)),
    "latency": lambda cfg: LatencyPolicy(cfg.name, cfg.threshold_ms, cfg.upper_threshold_ms),
    "probabilistic": lambda cfg: ProbabilisticPolicy(cfg.name, cfg.sampling_percentage, cfg.hash_salt),
    "always_sample": lambda cfg: AlwaysSamplePolicy(cfg.name),
    "string_attribute": lambda cfg: StringAttributePolicy(
        cfg.name, cfg.key, tuple(cfg.values), cfg.enabled_regex_matching, cfg.invert_match
    ),
    "numeric_attribute": lambda cfg: NumericAttributePolicy(
        cfg.name, cfg.key, cfg.min_value, cfg.max_value, cfg.invert_match
    ),
    "boolean_attribute": lambda cfg: BooleanAttributePolicy(cfg.name, cfg.key, cfg.value, cfg.invert_match),
    "span_count": lambda cfg: SpanCountPolicy(cfg.name, cfg.min_spans, cfg.max_spans),
    "trace_state": lambda cfg: TraceStatePolicy(cfg.name, cfg.key, frozenset(cfg.values)),
    "rate_limiting": lambda cfg: RateLimitingPolicy(
        cfg.name, cfg.spans_per_second, cfg.traces_per_second, cfg.burst_capacity, cfg.adjust_interval_ms
    ),
    "bytes_limiting": lambda cfg: BytesLimitingPolicy(
        cfg.name, cfg.bytes_per_second, cfg.burst_capacity, cfg.adjust_interval_ms
    ),
    "and": lambda cfg: AndPolicy(cfg.name, build_policies(cfg.policies)),
    "not": lambda cfg: NotPolicy(cfg.name, build_policy(cfg.policy)),
    "drop": lambda cfg: DropPolicy(cfg.name, build_policies(cfg.policies)),
    "composite": lambda cfg: _composite(cfg),
    "rules_based": lambda cfg: _rules(cfg),
    "dynamic": lambda cfg: DynamicPolicy(
        cfg.name, cfg.sample_rate, cfg.field_list, cfg.clear_frequency_s, cfg.max_keys
    ),
    "ema_dynamic": lambda cfg: EmaDynamicPolicy(cfg.name, cfg.goal_sample_rate, *_ema_args(cfg)),
    "ema_throughput": lambda cfg: EmaThroughputPolicy(cfg.name, cfg.goal_throughput_per_sec, *_ema_args(cfg)),
    "windowed_throughput": lambda cfg: WindowedThroughputPolicy(
        cfg.name,
        cfg.goal_throughput_per_sec,
        cfg.field_list,
        cfg.update_frequency_s,
        cfg.lookback_frequency_s,
        cfg.max_keys,
    ),
    "rare_path": lambda cfg: RarePathPolicy(
        cfg.name,
        cfg.keep_per_window,
        cfg.window_s,
        cfg.min_probability,
        cfg.sketch_width,
        cfg.sketch_depth,
        cfg.multiplicity,
    ),
}


def build_policy(cfg: c.PolicyConfig) -> Policy:
    builder = BUILDERS.get(cfg.type)
    if builder is None:
        raise TypeError(f"no operator for policy type {cfg.type!r}")
    return builder(cfg)


def _composite(cfg: c.CompositePolicyConfig) -> CompositePolicy:
    by_name = {p.name: p for p in cfg.policies}
    order = cfg.policy_order or [p.name for p in cfg.policies]
    percent = {a.policy: a.percent for a in cfg.rate_allocation}
    unallocated = [n for n in order if n not in percent]
    if unallocated:  # the rest of the budget is shared equally by sub-policies without an allocation
        rest = max(0.0, 100.0 - sum(percent.values())) / len(unallocated)
        for n in unallocated:
            percent[n] = rest
    subs = [build_policy(by_name[n]) for n in order]
    rates = [cfg.max_total_spans_per_second * percent[n] / 100.0 for n in order]
    return CompositePolicy(cfg.name, subs, rates)


def build_policies(configs: Sequence[c.PolicyConfig]) -> list[Policy]:
    return [build_policy(cfg) for cfg in configs]


def build_engine(sampling: c.SamplingConfig) -> DecisionEngine:
    return DecisionEngine(build_policies(sampling.policies), sampling.mode)
