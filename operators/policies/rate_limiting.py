"""Keep about ``spans_per_second`` spans (or ``traces_per_second`` traces) per second — with an
honest adjusted count.

The Collector's rate_limiting keeps whatever arrives while the budget lasts; the traces it then
drops are represented by nobody, so counts downstream are biased. Here the offered load is
measured (an EMA over ``adjust_interval`` intervals of what reached this policy) and every trace
is kept with probability p = min(1, limit / offered rate), consistently on the trace's randomness;
its adjusted count is 1/p. A token bucket (``burst_capacity``, default two seconds' worth) still
caps the output hard: a trace the draw picked but the bucket refuses is dropped and counted in
``guard_drops`` (only a burst faster than the EMA can follow gets there; those are the only
unrepresented traces). Until the first interval closes, p = 1 and the bucket alone limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.policies.base import Policy, Verdict, draw, within
from operators.rate import RateCap
from operators.trace import TraceView


@dataclass
class RateLimitingPolicy(Policy):
    name: str
    spans_per_second: float | None = None
    traces_per_second: float | None = None
    burst_capacity: float | None = None
    adjust_interval_ms: int = 1000
    weight: float = 0.5
    _per_trace: bool = field(init=False, repr=False)
    _cap: RateCap = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.spans_per_second is None) == (self.traces_per_second is None):
            raise ValueError("set exactly one of spans_per_second, traces_per_second")
        self._per_trace = self.traces_per_second is not None
        limit = float(self.traces_per_second or self.spans_per_second or 0.0)  # exactly one is set
        burst = self.burst_capacity or max(2.0 * limit, 1.0)
        self._cap = RateCap(limit, burst, self.adjust_interval_ms * 1_000_000, self.weight)
        unit = "traces" if self._per_trace else "spans"
        self._reason = f"rate_limiting:{limit:g}{unit}/s"

    @property
    def guard_drops(self) -> int:
        return self._cap.refused

    def evaluate(self, trace: TraceView) -> Verdict | None:
        units, now = (1 if self._per_trace else trace.span_count), trace.now_ns
        return within(self._cap, draw(trace, self._cap.probability(units, now), self._reason), units, now)
