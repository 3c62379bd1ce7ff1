"""``and``: keep a trace when every sub-policy keeps it (as the OTel Collector's and policy).

It applies only when every sub-policy applies with a keep verdict. Its probability: draws on the
trace's own randomness nest (kept by all ⇔ R ≥ max T_i), so for them the smallest probability
counts; other sources are independent and multiply. A sub-policy's drop makes ``and`` not apply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass
class AndPolicy(Policy):
    name: str
    policies: Sequence[Policy]

    def evaluate(self, trace: TraceView) -> Verdict | None:
        p_r = 1.0
        p_other = 1.0
        sampled = True
        other = False
        for sub in self.policies:
            v = sub.evaluate(trace)
            if v is None or v.action is not Action.KEEP:
                return None
            sampled = sampled and v.sampled
            if v.source:
                p_other *= v.probability
                other = True
            else:
                p_r = min(p_r, v.probability)
        return Verdict(
            Action.KEEP,
            "and(" + ",".join(s.name for s in self.policies) + ")",
            p_r * p_other,
            sampled,
            f"and:{self.name}" if other else "",
        )
