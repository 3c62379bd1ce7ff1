"""Shared machinery of the adaptive (Refinery-style) samplers: sampling keys, the per-key rate
allocation, and interval bookkeeping driven by the decision time (never a clock).

A sampler counts traces per key over intervals; at each interval's end it computes a sample
rate N_k ≥ 1 per key from the counts (``allocate``); until the next update, a trace of key k is
kept with probability 1/N_k, drawn consistently on the trace's randomness, and carries adjusted
count N_k — the probability in force at that moment, so counts stay honest while rates move.
Keys not seen in the last update get rate 1 (they are rare by definition). State is bounded:
at most ``max_keys`` keys are counted per interval, later ones share the ``__overflow__`` key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from operators.policies.base import Policy, Verdict, draw
from operators.trace import TraceView

OVERFLOW_KEY = "__overflow__"


def trace_key(trace: TraceView, fields: Sequence[str]) -> str:
    """The sampling key: each field read from the root span (else the first span) — header fields
    (``service.name``, ``name``, ``kind``, ``status_code``) for free, attributes lazily — plus the
    trace-level pseudo-fields ``error`` (any span ERROR) and ``span_count``. Missing → empty."""
    span = trace.root or trace.spans[0]
    parts = []
    for f in fields:
        v: object
        if f == "error":
            v = trace.has_error
        elif f == "span_count":
            v = trace.span_count
        else:
            v = trace.value(span, f[5:] if f.startswith("root.") else f)
        parts.append("" if v is None else str(v))
    return "\x1f".join(parts)


def allocate(counts: Mapping[str, float], goal_count: float) -> dict[str, float]:
    """Sample rates per key so that about ``goal_count`` of the counted traces would be kept,
    rare keys favoured: each key's share of the goal grows with log10 of its count (Refinery's
    dynamic-sampler rule); keys are visited rarest first, and what a key cannot use (it has fewer
    traces than its share) passes to the remaining keys. Rates are real numbers ≥ 1 (consistent
    sampling needs no integer rates), so the goal is met without rounding loss."""
    keys = [k for k, c in counts.items() if c > 0]
    if not keys:
        return {}
    total = sum(counts[k] for k in keys)
    if goal_count <= 0:
        goal_count = 1e-9
    if total <= goal_count:
        return {k: 1.0 for k in keys}
    log_sum = sum(math.log10(counts[k]) for k in keys if counts[k] > 1)
    if log_sum <= 0:  # every key seen about once: a uniform rate
        return {k: total / goal_count for k in keys}
    ratio = goal_count / log_sum
    keys.sort(key=lambda k: (counts[k], k))
    rates: dict[str, float] = {}
    extra = 0.0
    remaining = len(keys)
    for k in keys:
        c = counts[k]
        goal = math.log10(c) * ratio if c > 1 else 0.0
        share = extra / remaining
        goal += share
        extra -= share
        remaining -= 1
        if c <= goal:
            rates[k] = 1.0
            extra += goal - c
        else:
            goal = max(goal, min(1.0, c))  # every key keeps about one trace per interval at least
            rates[k] = c / goal
    return rates


class KeyCounter:
    """Counts per key with at most ``max_keys`` keys; the rest share ``OVERFLOW_KEY``."""

    __slots__ = ("max_keys", "counts")

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self.counts: dict[str, float] = {}

    def add(self, key: str, n: float = 1.0) -> str:
        counts = self.counts
        if key not in counts and len(counts) >= self.max_keys:
            key = OVERFLOW_KEY
        counts[key] = counts.get(key, 0.0) + n
        return key

    def total(self) -> float:
        return sum(self.counts.values())

    def take(self) -> dict[str, float]:
        out, self.counts = self.counts, {}
        return out


class IntervalClock:
    """Fixed intervals starting at the first time seen; ``advance`` reports how many closed."""

    __slots__ = ("interval_ns", "start_ns")

    def __init__(self, interval_ns: int):
        if interval_ns <= 0:
            raise ValueError("interval must be positive")
        self.interval_ns = interval_ns
        self.start_ns: int | None = None

    def advance(self, now_ns: int) -> int:
        if self.start_ns is None:
            self.start_ns = now_ns
            return 0
        closed = (now_ns - self.start_ns) // self.interval_ns
        if closed <= 0:
            return 0
        self.start_ns += closed * self.interval_ns
        return closed

    def restart(self, now_ns: int) -> None:
        self.start_ns = now_ns


class KeyedSampler(Policy):
    """Base of the adaptive samplers: count the trace's key, keep it with 1 / (its key's rate).

    Subclasses set ``kind`` and implement ``_on_close(closed, now_ns)`` (called when ``closed`` ≥ 1
    intervals ended), which turns what was counted into ``self._rates``."""

    kind = "adaptive"

    def __init__(self, name: str, field_list: Sequence[str], interval_ns: int, max_keys: int):
        self.name = name
        self.field_list = tuple(field_list)
        self.max_keys = max_keys
        self._clock = IntervalClock(interval_ns)
        self._counter = KeyCounter(max_keys)
        self._rates: dict[str, float] = {}

    @property
    def rates(self) -> dict[str, float]:
        return dict(self._rates)

    def _on_close(self, closed: int, now_ns: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _after_add(self, now_ns: int) -> None:
        """Hook after each count (burst detection)."""

    def evaluate(self, trace: TraceView) -> Verdict | None:
        now = trace.now_ns
        closed = self._clock.advance(now)
        if closed:
            self._on_close(closed, now)
        key = self._counter.add(trace_key(trace, self.field_list))
        self._after_add(now)
        rate = self._rates.get(key, 1.0)
        return draw(trace, 1.0 / rate, f"{self.kind}:rate={rate:.4g}")


class EmaKeyedSampler(KeyedSampler):
    """Per-key counts smoothed by an EMA over intervals, keys aged out below ``age_out_value``,
    and burst detection: when the current interval's count passes ``burst_multiple`` × the EMA
    total (after ``burst_detection_delay`` intervals of history), the rates are recomputed at once."""

    def __init__(
        self,
        name: str,
        field_list: Sequence[str],
        interval_ns: int,
        max_keys: int,
        weight: float = 0.5,
        age_out_value: float = 0.5,
        burst_multiple: float = 2.0,
        burst_detection_delay: int = 3,
    ):
        super().__init__(name, field_list, interval_ns, max_keys)
        self.weight = weight
        self.age_out_value = age_out_value
        self.burst_multiple = burst_multiple
        self.burst_detection_delay = burst_detection_delay
        self.ema: dict[str, float] = {}
        self.intervals = 0
        self.bursts = 0
        self._burst_limit = math.inf

    def _goal_count(self, ema_total: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fold(self, counts: dict[str, float], closed: int) -> None:
        w = self.weight
        ema = self.ema
        for i in range(min(closed, 64)):
            c = counts if i == 0 else {}
            for k in set(ema) | set(c):
                ema[k] = w * c.get(k, 0.0) + (1.0 - w) * ema.get(k, 0.0)
        for k in [k for k, v in ema.items() if v < self.age_out_value]:
            del ema[k]
        if len(ema) > self.max_keys:  # bounded even if the age-out is set too low
            for k in sorted(ema, key=ema.__getitem__)[: len(ema) - self.max_keys]:
                del ema[k]
        self.intervals += closed
        total = sum(ema.values())
        self._rates = allocate(ema, self._goal_count(total))
        self._burst_limit = self.burst_multiple * total if self.intervals >= self.burst_detection_delay else math.inf

    def _on_close(self, closed: int, now_ns: int) -> None:
        self._fold(self._counter.take(), closed)

    def _after_add(self, now_ns: int) -> None:
        if self._counter.total() > self._burst_limit:
            self.bursts += 1
            self._fold(self._counter.take(), 1)
            self._clock.restart(now_ns)
