"""Keep every trace (useful in tests, debugging, and as the last rule of a composite)."""

from __future__ import annotations

from dataclasses import dataclass

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass
class AlwaysSamplePolicy(Policy):
    name: str

    def evaluate(self, trace: TraceView) -> Verdict | None:
        return Verdict(Action.KEEP, "always_sample")
