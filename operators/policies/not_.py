"""``not``: keep (probability 1) exactly the traces its sub-policy does not apply to.

"Applies" is about the sub-policy's condition, not its draw: a status_code sub-policy applies to
error traces, so ``not`` keeps the error-free ones. (A probabilistic sub-policy applies to every
trace, so ``not`` of it never keeps anything.)"""

from __future__ import annotations

from dataclasses import dataclass

from operators.policies.base import Policy, Verdict, keep
from operators.trace import TraceView


@dataclass
class NotPolicy(Policy):
    name: str
    policy: Policy

    def evaluate(self, trace: TraceView) -> Verdict | None:
        if self.policy.evaluate(trace) is None:
            return keep(f"not({self.policy.name})")
        return None
