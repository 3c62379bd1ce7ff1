"""SLOs on the exact pre-sampling SLI windows: error budget remaining and multi-window,
multi-burn-rate values (Google SRE workbook, ch. 5: page on 1 h/5 min at 14.4×, 6 h/30 min at 6×;
ticket on 1 d/2 h at 3×, 3 d/6 h at 1×).

An objective selects SLI windows by service (and optionally operation, span kind) and counts
*events* (spans) and *bad events*: an ERROR status (availability) or a latency above
``threshold_ms`` (latency; counted from the window's DDSketch bins: exact except for the one bin
that straddles the threshold, i.e. within ± relative_accuracy of the threshold).
Burn rate over a window W = (bad / total over W) / (1 − objective); budget remaining over the
period = 1 − (bad / total) / (1 − objective). Pure and clock-free: time is the windows' end time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ddsketch import DDSketch

BUCKET_NS = 60 * 1_000_000_000  # history kept per minute of event time


@dataclass(frozen=True)
class BurnAlert:
    long_s: int
    short_s: int
    factor: float
    severity: str


DEFAULT_ALERTS = (
    BurnAlert(3_600, 300, 14.4, "page"),
    BurnAlert(21_600, 1_800, 6.0, "page"),
    BurnAlert(86_400, 7_200, 3.0, "ticket"),
    BurnAlert(259_200, 21_600, 1.0, "ticket"),
)


@dataclass(frozen=True)
class Objective:
    name: str
    service: str
    objective: float  # e.g. 0.999
    kind: str = "availability"  # or "latency"
    threshold_ms: float = 0.0
    operation: str = "*"
    span_kind: str = "*"
    period_s: int = 30 * 86_400
    alerts: tuple[BurnAlert, ...] = DEFAULT_ALERTS

    def matches(self, service: str, operation: str, span_kind: str) -> bool:
        return service == self.service and self.operation in ("*", operation) and self.span_kind in ("*", span_kind)

    @property
    def windows_s(self) -> list[int]:
        return sorted({w for a in self.alerts for w in (a.long_s, a.short_s)})


def count_above(sketch: DDSketch, threshold_ms: float) -> float:
    """Values in the sketch above ``threshold_ms``: every bin from the threshold's own bin up. The
    bin holding the threshold (values within ~2α below it) counts as above: conservative."""
    if threshold_ms <= 0:
        return float(sketch.count)
    store = sketch._store  # ddsketch pinned <4 (see operators.sli.sketch_to_record)
    key = sketch._mapping.key(threshold_ms)
    n = 0.0
    for i, c in enumerate(store.bins):
        if c and store.offset + i >= key:
            n += c
    return n


@dataclass
class _State:
    buckets: dict[int, list[float]] = field(default_factory=dict)  # minute → [total, bad]
    latest_ns: int = 0


class SloTracker:
    def __init__(self, objectives: Iterable[Objective]):
        self.objectives = list(objectives)
        self._state = {o.name: _State() for o in self.objectives}

    def observe(
        self,
        service: str,
        operation: str,
        span_kind: str,
        window_end_ns: int,
        span_count: int,
        error_count: int,
        sketch: DDSketch | None,
    ) -> list[tuple[str, int, float]]:
        """One emitted SLI window (or partial) — every partial counts once. Returns
        (objective name, events, bad events) for each objective it fed."""
        fed = []
        for o in self.objectives:
            if not o.matches(service, operation, span_kind):
                continue
            if o.kind == "latency":
                bad = count_above(sketch, o.threshold_ms) if sketch is not None else 0.0
            else:
                bad = float(error_count)
            fed.append((o.name, span_count, bad))
            st = self._state[o.name]
            b = st.buckets.setdefault(window_end_ns - window_end_ns % BUCKET_NS, [0.0, 0.0])
            b[0] += span_count
            b[1] += bad
            if window_end_ns > st.latest_ns:
                st.latest_ns = window_end_ns
                horizon = window_end_ns - max(o.period_s, max(o.windows_s, default=0)) * 1_000_000_000
                for k in [k for k in st.buckets if k < horizon]:
                    del st.buckets[k]
        return fed

    def _sum(self, o: Objective, seconds: int, now_ns: int | None) -> tuple[float, float]:
        st = self._state[o.name]
        now = st.latest_ns if now_ns is None else now_ns
        since = now - seconds * 1_000_000_000
        total = bad = 0.0
        for k, (t, b) in st.buckets.items():
            if since < k + BUCKET_NS and k <= now:
                total += t
                bad += b
        return total, bad

    def burn_rate(self, name: str, seconds: int, now_ns: int | None = None) -> float:
        o = self._objective(name)
        total, bad = self._sum(o, seconds, now_ns)
        return (bad / total) / (1.0 - o.objective) if total else 0.0

    def budget_remaining(self, name: str, now_ns: int | None = None) -> float:
        """Share of the period's error budget left (1 = untouched, < 0 = overspent)."""
        o = self._objective(name)
        total, bad = self._sum(o, o.period_s, now_ns)
        return 1.0 - (bad / total) / (1.0 - o.objective) if total else 1.0

    def status(self, now_ns: int | None = None) -> list[dict]:
        out = []
        for o in self.objectives:
            rates = {w: self.burn_rate(o.name, w, now_ns) for w in o.windows_s}
            firing = [a.severity for a in o.alerts if rates[a.long_s] > a.factor and rates[a.short_s] > a.factor]
            out.append(
                {
                    "slo": o.name,
                    "service": o.service,
                    "budget_remaining": self.budget_remaining(o.name, now_ns),
                    "burn_rates": rates,
                    "firing": firing,
                }
            )
        return out

    def _objective(self, name: str) -> Objective:
        for o in self.objectives:
            if o.name == name:
                return o
        raise KeyError(name)


def window_label(seconds: int) -> str:
    """Prometheus-style duration: 300 → 5m, 3600 → 1h, 86400 → 1d."""
    for unit, n in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"
