"""Time-driven building blocks of rate-aware samplers: a token bucket and an interval EMA rate.

Time is always passed in (unix nanos), never read from a clock, so every sampler built on these
is deterministic under test and on replay of the same arrival times. Time that goes backwards
(out-of-order input) refills nothing and closes no interval.
"""

from __future__ import annotations

_NS = 1_000_000_000


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored. By construction the tokens handed out
    over any span of time t never exceed rate·t + burst."""

    __slots__ = ("rate", "burst", "tokens", "last_ns")

    def __init__(self, rate: float, burst: float, now_ns: int | None = None):
        if rate < 0 or burst <= 0:
            raise ValueError("rate must be >= 0 and burst > 0")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last_ns = now_ns

    def _refill(self, now_ns: int) -> None:
        if self.last_ns is None:
            self.last_ns = now_ns
        elif now_ns > self.last_ns:
            self.tokens = min(self.burst, self.tokens + self.rate * (now_ns - self.last_ns) / _NS)
            self.last_ns = now_ns

    def take(self, n: float, now_ns: int) -> bool:
        """Take ``n`` tokens if there are that many (all or nothing)."""
        self._refill(now_ns)
        if n <= self.tokens:
            self.tokens -= n
            return True
        return False


class RateEstimator:
    """Units per second, as an exponentially weighted moving average over fixed intervals:
    each closed interval's rate r updates ``ema = weight·r + (1 − weight)·ema`` (the first
    closed interval sets it). ``rate`` is None until one interval has closed."""

    __slots__ = ("interval_ns", "weight", "ema", "count", "start_ns")

    def __init__(self, interval_ns: int = _NS, weight: float = 0.5):
        if interval_ns <= 0 or not 0.0 < weight <= 1.0:
            raise ValueError("interval must be > 0 and weight in (0, 1]")
        self.interval_ns = interval_ns
        self.weight = weight
        self.ema: float | None = None
        self.count = 0.0
        self.start_ns: int | None = None

    def _roll(self, now_ns: int) -> None:
        if self.start_ns is None:
            self.start_ns = now_ns
            return
        elapsed = (now_ns - self.start_ns) // self.interval_ns
        if elapsed <= 0:
            return
        seconds = self.interval_ns / _NS
        for i in range(min(elapsed, 64)):  # after 64 empty intervals the history is gone anyway
            r = (self.count if i == 0 else 0.0) / seconds
            self.ema = r if self.ema is None else self.weight * r + (1.0 - self.weight) * self.ema
        self.count = 0.0
        self.start_ns += elapsed * self.interval_ns

    def add(self, units: float, now_ns: int) -> None:
        self._roll(now_ns)
        self.count += units

    def rate(self, now_ns: int) -> float | None:
        self._roll(now_ns)
        return self.ema


class RateCap:
    """A rate limit with honest probabilities, shared by the rate-based policies: the offered rate
    is measured (a ``RateEstimator``) and a unit is kept with p = min(1, limit / offered rate) —
    drawn consistently by the caller — while a ``TokenBucket`` caps the output hard (what it
    refuses is counted in ``refused``: only a burst faster than the estimate can follow gets
    there). Until the first interval closes, p = 1 and the bucket alone limits."""

    __slots__ = ("limit", "estimator", "bucket", "refused")

    def __init__(self, limit: float, burst: float, interval_ns: int, weight: float = 0.5):
        self.limit = float(limit)
        self.estimator = RateEstimator(interval_ns, weight)
        self.bucket = TokenBucket(limit, burst)
        self.refused = 0

    def probability(self, units: float, now_ns: int, picked_share: float = 1.0) -> float:
        """Count ``units`` offered at ``now_ns``; the keep probability that brings the offered rate
        down to the limit. ``picked_share``: the part of the offered units an independent draw
        already picks (the cap then budgets only those)."""
        self.estimator.add(units, now_ns)
        offered = self.estimator.rate(now_ns)
        if offered:
            offered *= picked_share
        return 1.0 if not offered else min(1.0, self.limit / offered)

    def take(self, units: float, now_ns: int) -> bool:
        """Whether the bucket has room for ``units`` picked at ``now_ns`` (a refusal is counted)."""
        if self.bucket.take(units, now_ns):
            return True
        self.refused += 1
        return False
