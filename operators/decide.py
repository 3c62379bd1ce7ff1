"""Combine policy verdicts into one decision per trace.

Semantics (documented in the README):
- Every policy is evaluated, in config order. A DROP verdict from any policy wins.
- Otherwise the trace is kept if any policy says KEEP. The deciding policy is the matching one
  with the highest keep probability (a deterministic rule, p = 1, beats a probabilistic one);
  ties go to the earlier policy. That keeps counts honest: a trace that an error rule would keep
  anyway is not counted as 1/p traces just because a probabilistic rule listed first matched too.
- Otherwise the trace is dropped as ``not_sampled``.
- A policy that raises is recorded as an error and treated as having no opinion, so one buggy
  rule cannot stop the stream; the error count is exported as a metric by the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass(frozen=True, slots=True)
class Decision:
    keep: bool
    policy: str
    reason: str
    probability: float = 1.0

    @property
    def adjusted_count(self) -> float:
        """How many traces a kept trace stands for (1 / keep probability)."""
        return 1.0 / self.probability


NOT_SAMPLED = Decision(False, "", "not_sampled", 1.0)


class DecisionEngine:
    def __init__(self, policies: Sequence[Policy]):
        self.policies = list(policies)
        self.policy_errors: dict[str, int] = {}

    def decide(self, trace: TraceView) -> Decision:
        best: tuple[Policy, Verdict] | None = None
        for policy in self.policies:
            try:
                verdict = policy.evaluate(trace)
            except Exception:  # noqa: BLE001 - a bad rule must not stop the stream
                self.policy_errors[policy.name] = self.policy_errors.get(policy.name, 0) + 1
                continue
            if verdict is None:
                continue
            if verdict.action is Action.DROP:
                return Decision(False, policy.name, verdict.reason, verdict.probability)
            if best is None or verdict.probability > best[1].probability:
                best = (policy, verdict)
        if best is None:
            return NOT_SAMPLED
        policy, verdict = best
        return Decision(True, policy.name, verdict.reason, verdict.probability)
