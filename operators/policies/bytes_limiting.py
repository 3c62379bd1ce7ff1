"""Keep about ``bytes_per_second`` of encoded trace data per second, with bursts up to
``burst_capacity`` bytes (a token bucket, as the OTel Collector's bytes_limiting) — and an honest
adjusted count: like ``rate_limiting``, the offered byte rate is measured and each trace is kept
with probability p = min(1, bytes_per_second / offered bytes/s), consistently; the bucket caps the
output hard (refusals counted in ``guard_drops``). A trace larger than the burst never fits."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.policies.base import Policy, Verdict, draw, within
from operators.rate import RateCap
from operators.trace import TraceView


@dataclass
class BytesLimitingPolicy(Policy):
    name: str
    bytes_per_second: float
    burst_capacity: float | None = None
    adjust_interval_ms: int = 1000
    weight: float = 0.5
    _cap: RateCap = field(init=False, repr=False)

    def __post_init__(self) -> None:
        burst = self.burst_capacity or 2.0 * self.bytes_per_second
        self._cap = RateCap(self.bytes_per_second, burst, self.adjust_interval_ms * 1_000_000, self.weight)
        self._reason = f"bytes_limiting:{self.bytes_per_second:g}B/s"

    @property
    def guard_drops(self) -> int:
        return self._cap.refused

    def evaluate(self, trace: TraceView) -> Verdict | None:
        size, now = trace.size_bytes, trace.now_ns
        return within(self._cap, draw(trace, self._cap.probability(size, now), self._reason), size, now)
