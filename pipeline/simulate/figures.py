"""The figures of a simulation, accumulated as the replay goes (pure: no Kafka, no codecs).

Two sources, kept apart on purpose:

- **What the input says** about each trace (``TraceFacts``, from span headers only): its spans,
  whether a span is ERROR, its duration (latest end − earliest start, as the latency policy
  measures it), its root span's service and operation. This is the ground truth recall is
  measured against; it does not depend on any config.
- **What each config's job did** (``DecisionFacts`` from its decision records; kept spans and
  bytes from its ``traces.kept`` records, late ones included — what a backend is billed for).

A trace's facts are held until every config has decided it, then folded into counters and
forgotten: memory holds the undecided traces (as the job does), the bounded example candidates
and the bounded diff lists, not the whole input. Everything that reaches the JSON is sorted or
keyed so that the same input gives byte-identical output.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field

NO_ROOT = "(no root span)"
MAX_ROOT_KEYS = 1_000  # distinct (root service, operation) pairs counted for the rare-path example
MAX_RARE_CANDIDATE_KEYS = 256
MAX_SERVICES = 1_000  # root services listed per config (as sli.max_services); the rest: OTHER_SERVICES
OTHER_SERVICES = "__other__"
_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000


@dataclass(slots=True)
class TraceFacts:
    """One trace as the input shows it (header fields only), until every config has decided it."""

    configs: int
    spans: int = 0
    error: bool = False
    start_ns: int = 1 << 63
    end_ns: int = 0
    root_service: str = ""
    root_operation: str = ""  # as it arrived: protect it before it is written anywhere
    decisions: list[DecisionFacts | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.decisions:
            self.decisions = [None] * self.configs

    def add_spans(self, service: str, spans) -> None:
        self.spans += len(spans)
        for s in spans:
            if s["status_code"] == "ERROR":
                self.error = True
            start, end = s["start_time_unix_nano"], s["end_time_unix_nano"]
            if start < self.start_ns:
                self.start_ns = start
            if end > self.end_ns:
                self.end_ns = end
            if not s.get("parent_span_id") and not self.root_service:
                self.root_service, self.root_operation = service or "", s["name"]

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns) if self.spans else 0

    @property
    def root_key(self) -> tuple[str, str]:
        return (self.root_service, self.root_operation) if self.root_service else (NO_ROOT, "")

    @property
    def decided(self) -> bool:
        return all(d is not None for d in self.decisions)


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    keep: bool
    policy: str
    reason: str
    adjusted_count: float  # 1 / keep probability (0 for a trace kept only as context)


class Examples:
    """Bounded candidates for the example traces of one config: the kept error trace with the
    smallest trace id, the slowest other kept trace, and per root (service, operation) the two
    smallest other kept trace ids (two: the slowest may be one of them) — the rare path is chosen
    at the end, once the root counts are known. Each candidate holds its kept records' bytes."""

    def __init__(self, per_root: int = 2):
        self.per_root = per_root
        self.error: list[tuple[bytes, list[bytes]]] = []  # at most one, the smallest trace id
        self.slow: list[tuple[int, bytes, list[bytes]]] = []  # at most one: (-duration, trace id)
        self.by_root: dict[tuple[str, str], list[tuple[bytes, list[bytes]]]] = {}

    def offer(self, trace_id: bytes, facts: TraceFacts, values: list[bytes]) -> None:
        if facts.error:
            _insert(self.error, (trace_id, values), 1)
        else:  # an error trace is the error example; slow and rare show other traces
            _insert(self.slow, (-facts.duration_ns, trace_id, values), 1)
            key = facts.root_key
            if key in self.by_root or len(self.by_root) < MAX_RARE_CANDIDATE_KEYS:
                _insert(self.by_root.setdefault(key, []), (trace_id, values), self.per_root)

    def choose(self, root_counts: Counter) -> list[tuple[str, bytes, list[bytes]]]:
        """(why, trace id, kept record values): an error, a slow one, a rare path — distinct traces."""
        out: list[tuple[str, bytes, list[bytes]]] = []
        used: set[bytes] = set()
        if self.error:
            tid, values = self.error[0]
            out.append(("error", tid, values))
            used.add(tid)
        for _, tid, values in self.slow:
            if tid not in used:
                out.append(("slow", tid, values))
                used.add(tid)
                break
        for key in sorted(self.by_root, key=lambda k: (root_counts.get(k, 0), k)):
            pick = next(((tid, v) for tid, v in self.by_root[key] if tid not in used), None)
            if pick is not None:
                out.append(("rare", pick[0], pick[1]))
                break
        return out


def _insert(items: list, item: tuple, limit: int) -> None:
    """Keep ``items`` sorted and at most ``limit`` long (ties impossible: trace ids differ)."""
    if len(items) >= limit and item[:-1] >= items[-1][:-1]:
        return
    items.append(item)
    items.sort(key=lambda t: t[:-1])
    del items[limit:]


class ConfigFigures:
    """What one config would keep, over the traces every config has decided."""

    def __init__(self, name: str, path: str, slow_thresholds_ms: list[float]):
        self.name, self.path = name, path
        self.traces_seen = self.spans_seen = 0
        self.kept_traces = self.kept_spans = self.kept_bytes = 0
        self.keep_share: Counter = Counter()
        self.per_service: dict[str, list[int]] = {}
        self.error = [0, 0]
        self.slow = {t: [0, 0] for t in slow_thresholds_ms}
        self.adjusted_sum = 0.0
        self.dead_lettered: Counter = Counter()
        self.kept_spans_at: Counter = Counter()  # second → kept spans emitted then
        self.kept_by_policy_at: dict[int, Counter] = {}  # second → policy → traces kept then
        self.examples = Examples()

    def add_trace(self, facts: TraceFacts, decision: DecisionFacts) -> None:
        self.traces_seen += 1
        self.spans_seen += facts.spans
        keep = decision.keep
        service = facts.root_key[0]
        if service not in self.per_service and len(self.per_service) >= MAX_SERVICES:
            service = OTHER_SERVICES  # hostile or runaway service names cannot grow the document
        svc = self.per_service.setdefault(service, [0, 0])
        svc[0] += 1
        if keep:
            svc[1] += 1
            self.kept_traces += 1
            self.keep_share[decision.policy] += 1
            self.adjusted_sum += decision.adjusted_count
        if facts.error:
            self.error[0] += 1
            self.error[1] += keep
        duration = facts.duration_ns
        for threshold, counts in self.slow.items():
            if duration >= threshold * _NS_PER_MS:  # as the latency policy compares: at least
                counts[0] += 1
                counts[1] += keep

    def add_late_spans(self, spans: int) -> None:
        self.spans_seen += spans

    def add_decision_time(self, second: int, decision: DecisionFacts) -> None:
        if decision.keep:
            self.kept_by_policy_at.setdefault(second, Counter())[decision.policy] += 1

    def add_kept_record(self, second: int, spans: int, nbytes: int) -> None:
        self.kept_spans += spans
        self.kept_bytes += nbytes
        self.kept_spans_at[second] += spans

    def to_json(self, span_s: float, buckets: list[tuple[int, int]], input_at: Counter, examples: list) -> dict:
        per_s = 1.0 / span_s if span_s > 0 else 0.0
        return {
            "name": self.name,
            "path": self.path,
            "traces_seen": self.traces_seen,
            "spans_seen": self.spans_seen,
            "kept_traces": self.kept_traces,
            "kept_spans": self.kept_spans,
            "kept_bytes": self.kept_bytes,
            "kept_spans_per_s": round(self.kept_spans * per_s, 3),
            "kept_bytes_per_s": round(self.kept_bytes * per_s, 3),
            "keep_share_by_policy": dict(sorted(self.keep_share.items())),
            "per_service": {s: {"traces": t, "kept": k} for s, (t, k) in sorted(self.per_service.items())},
            "recall": {
                "error": {"seen": self.error[0], "kept": self.error[1]},
                "slow": {_ms_key(t): {"seen": s, "kept": k} for t, (s, k) in sorted(self.slow.items())},
            },
            "adjusted_count_sum": round(self.adjusted_sum, 6),
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "timeline": timeline(buckets, input_at, self.kept_spans_at, self.kept_by_policy_at),
            "examples": examples,
        }


def _ms_key(threshold_ms: float) -> str:
    return f"{threshold_ms:g}"


def bucket_seconds(first_s: int, last_s: int, max_buckets: int = 60) -> int:
    """Whole seconds per timeline bucket: 1 s, or wider so that at most ``max_buckets`` cover the input."""
    return max(1, math.ceil((last_s - first_s + 1) / max_buckets))


def buckets_for(first_s: int, last_s: int) -> list[tuple[int, int]]:
    """(start second, width) of each timeline bucket over [first_s, last_s]."""
    width = bucket_seconds(first_s, last_s)
    return [(s, width) for s in range(first_s, last_s + 1, width)]


def timeline(
    buckets: list[tuple[int, int]], input_at: Counter, kept_at: Counter, kept_by_policy_at: dict[int, Counter]
) -> list[dict]:
    """Per bucket: spans that arrived (by event time), kept spans and traces kept per policy (by
    the simulated time they were emitted; after the input's end: the last bucket)."""
    if not buckets:
        return []
    first, last_end = buckets[0][0], buckets[-1][0] + buckets[-1][1]
    width = buckets[0][1]

    def index(second: int) -> int:
        return min(max(second - first, 0), last_end - first - 1) // width

    rows = [{"t_ms": s * 1000, "input_spans": 0, "kept_spans": 0, "kept_by_policy": Counter()} for s, _ in buckets]
    for second, n in input_at.items():
        rows[index(second)]["input_spans"] += n
    for second, n in kept_at.items():
        rows[index(second)]["kept_spans"] += n
    for second, by_policy in kept_by_policy_at.items():
        rows[index(second)]["kept_by_policy"].update(by_policy)
    for row in rows:
        row["kept_by_policy"] = dict(sorted(row["kept_by_policy"].items()))
    return rows


class Diff:
    """Traces two configs decide differently: the ``limit`` smallest trace ids of each side and
    how many more there are (bounded memory, deterministic choice)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.sides: dict[str, list] = {"only_candidate": [], "only_current": []}  # max-heaps by trace id
        self.total = 0

    def add(self, side: str, trace_id: bytes, entry: dict) -> None:
        self.total += 1
        heap = self.sides[side]
        item = (_Desc(trace_id), entry)
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif trace_id < heap[0][0].value:
            heapq.heapreplace(heap, item)

    def to_json(self) -> dict:
        out: dict = {side: [e for _, e in sorted(heap, key=lambda t: t[0].value)] for side, heap in self.sides.items()}
        out["more"] = self.total - sum(len(h) for h in self.sides.values())
        return out


class _Desc:
    """Reverses the order of bytes, so heapq's min-heap keeps the largest trace id on top."""

    __slots__ = ("value",)

    def __init__(self, value: bytes):
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value


def span_s(first_ns: int, last_ns: int) -> float:
    return max(0, last_ns - first_ns) / _NS_PER_S
