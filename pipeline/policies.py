"""Build sampling policy operators from their validated config (one entry per policy type)."""

from __future__ import annotations

from collections.abc import Sequence

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


def build_policy(cfg: c.PolicyConfig) -> Policy:
    if isinstance(cfg, c.StatusCodePolicyConfig):
        return StatusCodePolicy(cfg.name, frozenset(cfg.status_codes))
    if isinstance(cfg, c.LatencyPolicyConfig):
        return LatencyPolicy(cfg.name, cfg.threshold_ms, cfg.upper_threshold_ms)
    if isinstance(cfg, c.ProbabilisticPolicyConfig):
        return ProbabilisticPolicy(cfg.name, cfg.sampling_percentage, cfg.hash_salt)
    if isinstance(cfg, c.AlwaysSamplePolicyConfig):
        return AlwaysSamplePolicy(cfg.name)
    if isinstance(cfg, c.StringAttributePolicyConfig):
        return StringAttributePolicy(cfg.name, cfg.key, tuple(cfg.values), cfg.enabled_regex_matching, cfg.invert_match)
    if isinstance(cfg, c.NumericAttributePolicyConfig):
        return NumericAttributePolicy(cfg.name, cfg.key, cfg.min_value, cfg.max_value, cfg.invert_match)
    if isinstance(cfg, c.BooleanAttributePolicyConfig):
        return BooleanAttributePolicy(cfg.name, cfg.key, cfg.value, cfg.invert_match)
    if isinstance(cfg, c.SpanCountPolicyConfig):
        return SpanCountPolicy(cfg.name, cfg.min_spans, cfg.max_spans)
    if isinstance(cfg, c.TraceStatePolicyConfig):
        return TraceStatePolicy(cfg.name, cfg.key, frozenset(cfg.values))
    if isinstance(cfg, c.RateLimitingPolicyConfig):
        return RateLimitingPolicy(
            cfg.name, cfg.spans_per_second, cfg.traces_per_second, cfg.burst_capacity, cfg.adjust_interval_ms
        )
    if isinstance(cfg, c.BytesLimitingPolicyConfig):
        return BytesLimitingPolicy(cfg.name, cfg.bytes_per_second, cfg.burst_capacity, cfg.adjust_interval_ms)
    if isinstance(cfg, c.AndPolicyConfig):
        return AndPolicy(cfg.name, build_policies(cfg.policies))
    if isinstance(cfg, c.NotPolicyConfig):
        return NotPolicy(cfg.name, build_policy(cfg.policy))
    if isinstance(cfg, c.DropPolicyConfig):
        return DropPolicy(cfg.name, build_policies(cfg.policies))
    if isinstance(cfg, c.CompositePolicyConfig):
        return _composite(cfg)
    if isinstance(cfg, c.RulesBasedPolicyConfig):
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
    if isinstance(cfg, c.DynamicPolicyConfig):
        return DynamicPolicy(cfg.name, cfg.sample_rate, cfg.field_list, cfg.clear_frequency_s, cfg.max_keys)
    if isinstance(cfg, c.EmaDynamicPolicyConfig):
        return EmaDynamicPolicy(
            cfg.name,
            cfg.goal_sample_rate,
            cfg.field_list,
            cfg.adjustment_interval_s,
            cfg.weight,
            cfg.age_out_value,
            cfg.burst_multiple,
            cfg.burst_detection_delay,
            cfg.max_keys,
        )
    if isinstance(cfg, c.EmaThroughputPolicyConfig):
        return EmaThroughputPolicy(
            cfg.name,
            cfg.goal_throughput_per_sec,
            cfg.field_list,
            cfg.adjustment_interval_s,
            cfg.weight,
            cfg.age_out_value,
            cfg.burst_multiple,
            cfg.burst_detection_delay,
            cfg.max_keys,
        )
    if isinstance(cfg, c.WindowedThroughputPolicyConfig):
        return WindowedThroughputPolicy(
            cfg.name,
            cfg.goal_throughput_per_sec,
            cfg.field_list,
            cfg.update_frequency_s,
            cfg.lookback_frequency_s,
            cfg.max_keys,
        )
    if isinstance(cfg, c.RarePathPolicyConfig):
        return RarePathPolicy(
            cfg.name,
            cfg.keep_per_window,
            cfg.window_s,
            cfg.min_probability,
            cfg.sketch_width,
            cfg.sketch_depth,
            cfg.multiplicity,
        )
    raise TypeError(f"no operator for policy type {type(cfg).__name__}")


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
