"""``and``: keep a trace when every sub-policy keeps it (as the OTel Collector's and policy).

It applies only when every sub-policy applies with a keep verdict. Its keep event is the
conjunction of its sub-policies' draws: on one randomness source they nest (kept by all ⇔
R ≥ max T_i, the smallest probability counts); different sources are independent and multiply.
The verdict lists that conjunction in ``draws``, so beside other policies the engine computes π
exactly instead of treating ``and`` as one more independent source (see
``operators.keep_probability``). A sub-policy's drop makes ``and`` not apply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from operators import keep_probability as kp
from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass
class AndPolicy(Policy):
    name: str
    policies: Sequence[Policy]

    def evaluate(self, trace: TraceView) -> Verdict | None:
        events = []
        sampled = True
        for sub in self.policies:
            v = sub.evaluate(trace)
            if v is None or v.action is not Action.KEEP:
                return None
            sampled = sampled and v.sampled
            events.append(kp.conjunction(v.probability, v.source, v.draws))
        p, source, draws = kp.verdict_fields(kp.conjoin(*events))
        return Verdict(Action.KEEP, "and(" + ",".join(s.name for s in self.policies) + ")", p, sampled, source, draws)
