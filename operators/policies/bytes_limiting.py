"""Keep about ``bytes_per_second`` of encoded trace data per second, with bursts up to
``burst_capacity`` bytes (a token bucket, as the OTel Collector's bytes_limiting) — and an honest
adjusted count: like ``rate_limiting``, the offered byte rate is measured and each trace is kept
with probability p = min(1, bytes_per_second / offered bytes/s), consistently; the bucket caps the
output hard (refusals counted in ``guard_drops``). A trace larger than the burst never fits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from operators.policies.base import Policy, Verdict, draw
from operators.rate import RateEstimator, TokenBucket
from operators.trace import TraceView


@dataclass
class BytesLimitingPolicy(Policy):
    name: str
    bytes_per_second: float
    burst_capacity: float | None = None
    adjust_interval_ms: int = 1000
    weight: float = 0.5
    guard_drops: int = 0
    _estimator: RateEstimator = field(init=False, repr=False)
    _bucket: TokenBucket = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._estimator = RateEstimator(self.adjust_interval_ms * 1_000_000, self.weight)
        self._bucket = TokenBucket(self.bytes_per_second, self.burst_capacity or 2.0 * self.bytes_per_second)
        self._reason = f"bytes_limiting:{self.bytes_per_second:g}B/s"

    def evaluate(self, trace: TraceView) -> Verdict | None:
        now = trace.now_ns
        size = trace.size_bytes
        self._estimator.add(size, now)
        offered = self._estimator.rate(now)
        p = 1.0 if not offered else min(1.0, self.bytes_per_second / offered)
        verdict = draw(trace, p, self._reason)
        if verdict.sampled and not self._bucket.take(size, now):
            self.guard_drops += 1
            return replace(verdict, sampled=False)
        return verdict
