"""Build sampling policy operators from their validated config (one entry per policy type)."""

from __future__ import annotations

from typing import Sequence

from operators.policies.always_sample import AlwaysSamplePolicy
from operators.policies.base import Policy
from operators.policies.latency import LatencyPolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.status_code import StatusCodePolicy
from pipeline import config as c


def build_policy(cfg: c.PolicyConfig) -> Policy:
    if isinstance(cfg, c.StatusCodePolicyConfig):
        return StatusCodePolicy(cfg.name, frozenset(cfg.status_codes))
    if isinstance(cfg, c.LatencyPolicyConfig):
        return LatencyPolicy(cfg.name, cfg.threshold_ms, cfg.upper_threshold_ms)
    if isinstance(cfg, c.ProbabilisticPolicyConfig):
        return ProbabilisticPolicy(cfg.name, cfg.sampling_percentage)
    if isinstance(cfg, c.AlwaysSamplePolicyConfig):
        return AlwaysSamplePolicy(cfg.name)
    raise TypeError(f"no operator for policy type {type(cfg).__name__}")


def build_policies(configs: Sequence[c.PolicyConfig]) -> list[Policy]:
    return [build_policy(cfg) for cfg in configs]
