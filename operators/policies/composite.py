"""``composite``: ordered sub-policies sharing ``max_total_spans_per_second`` by allocation
percentages (as the OTel Collector's composite policy), with honest counts.

The first sub-policy (in ``policy_order``) that applies handles the trace. The Collector's takes
the first that *samples*; config load (``pipeline.config_collector``) allows a sub-policy that
draws only in the last place, where the two agree. Its share of the span
budget is enforced the way ``rate_limiting`` does it: the spans of the traces that sub-policy
applies to are measured, and its pick is kept only if a budget draw with probability
b = min(1, allocation / offered spans/s) on the same trace randomness also keeps it — so the trace
is kept iff R ≥ max(T_sub, T_b) and
its probability is min(p_sub, b). A sub-policy with a salted draw is combined independently
(p_sub · b), and the verdict lists both draws so the engine computes π exactly beside other
policies (see ``operators.keep_probability``). A token bucket per sub-policy still caps output
(``guard_drops``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from operators import keep_probability as kp
from operators.policies.base import Action, Policy, Verdict, draw, within
from operators.rate import RateCap
from operators.trace import TraceView


@dataclass
class CompositePolicy(Policy):
    name: str
    policies: Sequence[Policy]  # in policy order
    spans_per_second: Sequence[float]  # allocation of each, same order
    adjust_interval_ms: int = 1000
    _caps: list[RateCap] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.policies) != len(self.spans_per_second):
            raise ValueError("one allocation per sub-policy")
        self._caps = [RateCap(r, max(2.0 * r, 1.0), self.adjust_interval_ms * 1_000_000) for r in self.spans_per_second]

    @property
    def guard_drops(self) -> int:
        return sum(cap.refused for cap in self._caps)

    def evaluate(self, trace: TraceView) -> Verdict | None:
        now = trace.now_ns
        for i, sub in enumerate(self.policies):
            v = sub.evaluate(trace)
            if v is None:
                continue
            if v.action is not Action.KEEP:
                return None  # a drop sub-policy only excludes (drop belongs at the top level)
            n = trace.span_count
            # the spans/s of the traces this sub-policy applies to; independent draws multiply:
            # budget only the sub-policy's picks
            b = self._caps[i].probability(n, now, v.probability if (v.source or v.draws) else 1.0)
            budget = draw(trace, b, "")
            reason = f"composite:{sub.name}:{v.reason}"
            event = kp.conjoin(kp.conjunction(v.probability, v.source, v.draws), kp.conjunction(b, kp.R, None))
            p, source, draws = kp.verdict_fields(event)
            verdict = Verdict(Action.KEEP, reason, p, v.sampled and budget.sampled, source, draws)
            return within(self._caps[i], verdict, n, now)
        return None
