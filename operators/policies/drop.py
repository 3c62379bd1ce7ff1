"""``drop``: drop the traces every sub-policy applies to (as the OTel Collector's drop policy).
A drop wins over every keep (see ``operators.decide``), so this is how health checks and
synthetic probes are kept out even when they error.

"Applies" is about conditions, not draws: sub-policies are used as predicates. A sub-policy that
draws (probabilistic, rate-based, adaptive) is refused at config load
(``pipeline.config_collector``): it would apply to every trace here, where the Collector drops
only the share its draw picks. A dropped trace stands for nothing, so drop rules should select
traffic nobody wants counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from operators.policies.base import Action, Policy, Verdict, drop
from operators.trace import TraceView


@dataclass
class DropPolicy(Policy):
    name: str
    policies: Sequence[Policy]
    can_drop: bool = True

    def evaluate(self, trace: TraceView) -> Verdict | None:
        for sub in self.policies:
            v = sub.evaluate(trace)
            if v is None or v.action is not Action.KEEP:
                return None
        return drop("drop(" + ",".join(s.name for s in self.policies) + ")")
