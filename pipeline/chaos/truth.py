"""Ground truth: what the suite produced, per trace, compactly enough for a million spans.

Span IDs are kept as one sorted ``bytes`` per trace (8 bytes a span, no per-span object), turned
into a set only for the traces that need checking."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from operators.privacy.sanitize import sanitize_span_name

# (service, operation, span kind, status): the SLI dimensions, operation as the job labels it
SliKey = tuple[str, str, str, str]


@dataclass(slots=True)
class TraceTruth:
    trace_id: bytes
    span_ids: bytes  # sorted, concatenated 8-byte span IDs
    span_count: int
    has_error: bool
    error_late_only: bool = False  # its ERROR spans are all in batches the generator made late

    def span_set(self) -> set[bytes]:
        ids = self.span_ids
        return {ids[i : i + 8] for i in range(0, len(ids), 8)}


@dataclass(slots=True)
class Send:
    """One message of an error trace as the suite wrote it — what the classification of a missed
    error trace compares with its decision (``pipeline.chaos.misses``). Wall-clock times, ns."""

    error: bool  # holds an ERROR span of the trace
    late: bool  # made late on purpose by the generator (a redelivered consumer attempt)
    misplaced: bool  # written off the trace's canonical partition: the job re-keys it
    produced_ns: int  # its export time in the generator's schedule (handed to the producer from then)
    partition: int = -1  # where it was written (from the delivery report)
    offset: int = -1
    created_ms: int = -1  # its Kafka timestamp (CreateTime: when it was handed to the producer)
    acked_ns: int = 0  # its delivery report seen: in the log by then (0: never acknowledged)
    digest: bytes = b""  # of its value: a re-keyed copy (Avro: the same bytes) is found by it
    # its spans' IDs: a re-keyed copy that holds other spans too (OTLP: one copy of every trace of
    # a message bound for one partition) is found by them (``pipeline.chaos.misses.copies``)
    span_ids: frozenset[bytes] = frozenset()


@dataclass
class Truth:
    traces: dict[bytes, TraceTruth] = field(default_factory=dict)
    sli_spans: Counter = field(default_factory=Counter)  # SliKey → spans
    sli_errors: Counter = field(default_factory=Counter)  # SliKey → spans with status ERROR
    spans: int = 0
    messages: int = 0
    # (partition, offset) of every message meant to be dead-lettered → what it is (fuzz kind)
    poison: dict[tuple[int, int], str] = field(default_factory=dict)
    poison_sent: int = 0
    # SHA-256 (hex) of fuzz mutations that still decode: the job takes them as data, and one whose
    # span detail or resource is corrupt is reported as detail_decode_error if its trace is kept —
    # from where it was read, which for a re-keyed copy is not where the suite wrote it (hence the
    # digest, which dead letters carry, not the position)
    mutations: set[str] = field(default_factory=set)
    # error traces only: trace ID → its messages as written (``Send``), for classifying misses
    sends: dict[bytes, list[Send]] = field(default_factory=dict)

    def add_batches(self, trace_id: bytes, batches: list[dict], late: list[bool] | None = None) -> None:
        """One trace's spans (SpanBatch-shaped dicts: service + spans with id, name, kind,
        status_code), added once the trace's messages are handed to the producer; ``late``: per
        batch, late on purpose (``GeneratedTrace.late``: may come after the decision point)."""
        ids: list[bytes] = []
        error_on_time = error_late = False
        sli_spans, sli_errors = self.sli_spans, self.sli_errors
        for i, b in enumerate(batches):
            service = b["service"]
            is_late = bool(late and late[i])
            for s in b["spans"]:
                ids.append(s["span_id"])
                key = (service, _operation(s["name"]), s["kind"], s["status_code"])
                sli_spans[key] += 1
                if s["status_code"] == "ERROR":
                    sli_errors[key] += 1
                    if is_late:
                        error_late = True
                    else:
                        error_on_time = True
        old = self.traces.get(trace_id)
        if old is not None:  # more spans of a trace already recorded (a second part)
            ids.extend(old.span_set())
            error_on_time = error_on_time or (old.has_error and not old.error_late_only)
            error_late = error_late or old.error_late_only
            self.spans -= old.span_count
        ids.sort()
        has_error = error_on_time or error_late
        self.traces[trace_id] = TraceTruth(
            trace_id, b"".join(ids), len(ids), has_error, has_error and not error_on_time
        )
        self.spans += len(ids)

    @property
    def error_traces(self) -> int:
        return sum(t.has_error for t in self.traces.values())


def digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=8).digest()


_OP_MEMO: dict[str, str] = {}


def _operation(name: str) -> str:
    op = _OP_MEMO.get(name)
    if op is None:
        op = sanitize_span_name(name)
        if len(_OP_MEMO) < 100_000:  # bounded: hostile span names are not memoized forever
            _OP_MEMO[name] = op
    return op
