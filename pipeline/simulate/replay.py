"""Replay captured messages through the real job core, once per config, in simulated event time.

``Replay`` owns one ``pipeline.job.Job`` per config and drives it exactly as the data plane does
— ``ingest`` a batch of messages, ``collect`` the outbox every ``job.tick_ms``, ``delivered`` its
records — except that nothing is produced anywhere: the outbox records are read here (decision
records → decisions, ``traces.kept`` records → kept spans and bytes, dead letters → counts,
re-keyed copies → fed back as the broker would) and dropped. Time is ``SimClock``'s: the input's
event time, so the job's decision points, rate caps and adaptive samplers run on the traffic's
own time, at any replay speed, the same on every run.

Messages are replayed in a fixed order: per partition in offset order, partitions merged by the
messages' Kafka timestamps (as a consumer of all partitions sees them, about), ties by partition.

The job runs ``at_least_once``: in a simulation there is no transaction to join, and the
guarantee changes no decision (it only makes every tick flush the SLI windows).
"""

from __future__ import annotations

import heapq
import io
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fastavro

from operators.decide import Decision
from operators.privacy.sanitize import sanitize_span_name
from operators.span_times import SpanTimeBounds
from pipeline.capture import Message
from pipeline.codecs import avro, otlp
from pipeline.config import Config
from pipeline.job import Job, Outbox, Received
from pipeline.kafka.partitioner import canonical_partition
from pipeline.privacy import build_protector
from pipeline.simulate.clock import SimClock
from pipeline.simulate.figures import (
    ConfigFigures,
    DecisionFacts,
    Diff,
    TraceFacts,
    buckets_for,
    span_s,
)

_ZERO_TRACE_ID = bytes(16)
_NS_PER_S = 1_000_000_000
_FOLDED_MEMORY = 1_000_000  # trace ids remembered as counted, so their late spans are not new traces
_SETTLING_MAX = 1_000_000  # decided traces waiting for late spans (oldest counted first beyond it)
_MIN_SETTLE_NS = 60 * 1_000_000_000
_REKEYED_OFFSET_BASE = 1 << 48  # offsets of re-keyed copies fed back (never collide with real ones)
_MAX_FINAL_ROUNDS = 16


@dataclass(frozen=True)
class SimConfig:
    name: str  # "candidate" | "current"
    path: str
    config: Config


def merged(partitions: dict[int, Iterable[Message]]) -> Iterator[Message]:
    """All partitions' messages, each partition in its own order, merged by Kafka timestamp."""
    return heapq.merge(*(partitions[p] for p in sorted(partitions)), key=lambda m: (m.timestamp_ms, m.partition))


class Replay:
    def __init__(self, configs: list[SimConfig], slow_thresholds_ms: list[float], diff_limit: int = 50):
        if not configs:
            raise ValueError("at least one config")
        formats = {c.config.ingest.format for c in configs}
        if len(formats) > 1:
            raise ValueError(
                f"the configs read different input formats ({', '.join(sorted(formats))}): compare like with like"
            )
        self.configs = configs
        self.format = configs[0].config.ingest.format
        self.jobs = [Job(_simulation_config(c.config), worker_id="simulate") for c in configs]
        self.figures = [ConfigFigures(c.name, c.path, sorted(set(slow_thresholds_ms))) for c in configs]
        first = configs[0].config
        self.clock = SimClock(first.ingest.max_clock_skew_ms * 1_000_000)
        self.time_bounds = SpanTimeBounds(
            int(first.sli.window_seconds * 1e9), first.ingest.max_clock_skew_ms * 1_000_000
        )
        self.tick_ns = min(c.config.job.tick_ms for c in configs) * 1_000_000
        self.batch_max = min(c.config.job.batch_max_messages for c in configs)
        self.final_wait_ns = max(
            max(a.decision_wait_ms, a.root_quiet_gap_ms, a.idle_partition_ms) * 1_000_000
            + int(c.config.sli.window_seconds * 1e9 + c.config.sli.grace_seconds * 1e9)
            for c in configs
            for a in (c.config.assemble,)
        )
        # root operations leave only as an SLI dimension would: through the protector, or sanitized
        self._protect_name = build_protector(first.privacy).dimension if first.privacy.enabled else sanitize_span_name
        self._topics = [c.config.topics for c in configs]
        self.diff = Diff(diff_limit) if len(configs) == 2 else None
        self._pending: dict[bytes, TraceFacts] = {}
        # decided by every config, not yet counted: late spans still join the trace's facts (the
        # ground truth is the whole trace, also what arrived after the decisions)
        self._settling: OrderedDict[bytes, tuple[TraceFacts, int]] = OrderedDict()
        self.settle_ns = max(self.final_wait_ns, _MIN_SETTLE_NS)
        self._folded: OrderedDict[bytes, None] = OrderedDict()
        self._refeed: list[list[Received]] = [[] for _ in configs]
        self._rekeyed_offsets: Counter = Counter()
        self._batch: list[tuple[Message, object]] = []  # (message, decoded headers or None)
        self._next_tick: int | None = None
        self.root_counts: Counter = Counter()
        self.input_at: Counter = Counter()  # event second → spans
        self.messages = self.spans = self.invalid = self.late_spans = 0
        self.first_ns: int | None = None
        self.last_ns = 0
        self.partitions: set[int] = set()
        self._kept_header = _kept_header_reader() if all(c.config.emit.format == "avro" for c in configs) else None

    # ------------------------------------------------------------------ feeding
    def feed(self, messages: Iterable[Message]) -> None:
        """Replay ``messages`` (in this order): batches of ``job.batch_max_messages``, and a
        ``collect`` whenever the simulated clock passes the next ``job.tick_ms``."""
        for m in messages:
            self.messages += 1
            self.partitions.add(m.partition)
            decoded = self._headers(m.value)
            event = max(s["end_time_unix_nano"] for _, _, spans in decoded for s in spans) if decoded else None
            before = self.clock.now_ns
            now = self.clock.observe(event, m.timestamp_ms)
            if now is None:  # nothing decodable so far: these are dead letters whatever the time
                self._batch.append((m, decoded))
                if len(self._batch) >= self.batch_max:
                    self._ingest_batch(0)
                continue
            if self._next_tick is None:
                self._next_tick = now + self.tick_ns
            if self._batch and (len(self._batch) >= self.batch_max or now >= self._next_tick):
                self._ingest_batch(before if before is not None else now)
            if now >= self._next_tick:  # the worker's timer fired before this message arrived
                self._collect_all(now)
                self._next_tick = now + self.tick_ns
            self._batch.append((m, decoded))

    def finish(self) -> None:
        """The input ended: ingest the rest and let every decision point pass."""
        now = self.clock.now_ns
        if self._batch:
            self._ingest_batch(now)
        if now is None:  # not one decodable message: only dead letters to collect
            self._collect_all(0, flush_windows=True)
            return
        end = now + self.final_wait_ns + self.tick_ns
        for _ in range(_MAX_FINAL_ROUNDS):
            self._collect_all(end, flush_windows=True)
            if not any(self._refeed):
                break
            self._refeed_all(end)
            end += self.final_wait_ns + self.tick_ns
        while self._settling:
            trace_id, (facts, _) = self._settling.popitem(last=False)
            self._count(trace_id, facts)

    # ------------------------------------------------------------------ one batch
    def _ingest_batch(self, now: int | None) -> None:
        batch, self._batch = self._batch, []
        if now is None:  # no message so far had an event time: nothing valid to replay at all
            now = 0
        received = []
        for m, decoded in batch:
            received.append(Received(m.partition, m.offset, m.key, m.value))
            if not decoded or self._time_violation(decoded, now):
                self.invalid += 1
                continue
            for trace_id, service, spans in decoded:
                self._add_input(trace_id, service, spans)
        for i, job in enumerate(self.jobs):
            job.ingest(self._refeed_take(i, now) + received, now)

    def _time_violation(self, decoded, now: int) -> bool:
        return any(self.time_bounds.violation(spans, now) for _, _, spans in decoded)

    def _add_input(self, trace_id: bytes, service: str, spans: list) -> None:
        n = len(spans)
        self.spans += n
        for s in spans:
            start, end = s["start_time_unix_nano"], s["end_time_unix_nano"]
            if self.first_ns is None or start < self.first_ns:
                self.first_ns = start
            if end > self.last_ns:
                self.last_ns = end
        self.input_at[max(s["end_time_unix_nano"] for s in spans) // _NS_PER_S] += n
        settling = self._settling.get(trace_id)
        if settling is not None:  # decided everywhere: late spans, part of the trace all the same
            self.late_spans += n
            settling[0].add_spans(service, spans)
            return
        if trace_id in self._folded:  # counted already: only the span totals can take them
            self.late_spans += n
            for f in self.figures:
                f.add_late_spans(n)
            return
        facts = self._pending.get(trace_id)
        if facts is None:
            facts = self._pending[trace_id] = TraceFacts(len(self.jobs))
        facts.add_spans(service, spans)

    def _headers(self, value: bytes | None) -> list[tuple[bytes, str, list]] | None:
        """(trace id, service, span headers) of a message, or None if the job would dead-letter it
        for its bytes (the time check needs the clock: ``_time_violation``)."""
        if not value:
            return None
        try:
            if self.format == "avro":
                batch = avro.decode_batch(value)
                if not batch["spans"] or batch["trace_id"] == _ZERO_TRACE_ID:
                    return None
                return [(batch["trace_id"], batch["service"], batch["spans"])]
            traces = otlp.decode_traces(value, self.format)  # times: checked at the batch's clock
        except Exception:  # noqa: BLE001 - hostile bytes are data: the job dead-letters them, we count them
            return None
        out = []
        for trace_id, trace in traces.items():
            by_service: dict[str, list] = {}
            for s in trace.spans:
                by_service.setdefault(s["service"], []).append(s)
            out.extend((trace_id, service, spans) for service, spans in by_service.items())
        return out or None

    # ------------------------------------------------------------------ outboxes
    def _collect_all(self, now: int, flush_windows: bool = False) -> None:
        second = now // _NS_PER_S
        decided: list[tuple[int, bytes, DecisionFacts]] = []
        for i, job in enumerate(self.jobs):
            out = job.collect(now, flush_all_windows=flush_windows)
            decided.extend(self._read_outbox(i, out, second))
            job.delivered(out.records)
            job.ready()  # what a live worker would commit now; nothing to commit here
        self._fold(decided, now)

    def _read_outbox(self, i: int, out: Outbox, second: int) -> list[tuple[int, bytes, DecisionFacts]]:
        fig, topics = self.figures[i], self._topics[i]
        decisions = []
        kept_values: dict[bytes, list[bytes]] = {}
        for r in out.records:
            if r.topic == topics.decisions.name:
                d = avro.decode(avro.TRACE_DECISION, r.value)
                facts = self._pending.get(d["trace_id"])
                if facts is None or facts.decisions[i] is not None:
                    continue  # a late span's decision update, or a trace already folded
                decision = Decision(
                    d["keep"], d["policy"], d["reason"], d["probability"], d["threshold"], d["dry_run_kept"]
                )
                df = DecisionFacts(decision.keep, decision.policy, decision.reason, decision.adjusted_count)
                facts.decisions[i] = df
                fig.add_decision_time(second, df)
                decisions.append((i, d["trace_id"], df))
            elif r.topic == topics.traces_kept.name:
                fig.add_kept_record(second, self._kept_span_count(r.key, r.value, i), len(r.value))
                kept_values.setdefault(r.key, []).append(r.value)
            elif r.topic == topics.deadletter.name:
                fig.dead_lettered[avro.decode(avro.DEAD_LETTER, r.value)["reason"]] += 1
            elif r.topic == topics.spans_raw.name:  # re-keyed: the broker would deliver it again
                self._rekeyed(i, r.key, r.partition, r.value)
        for trace_id, values in kept_values.items():
            facts = self._pending.get(trace_id)
            if facts is not None and facts.decisions[i] is not None:
                fig.examples.offer(trace_id, facts, values)
        return decisions

    def _kept_span_count(self, key: bytes, value: bytes, i: int) -> int:
        fmt = self.configs[i].config.emit.format
        if fmt == "avro" and self._kept_header is not None:
            return self._kept_header(value)["span_count"]
        if fmt == "avro":
            return avro.decode(avro.KEPT_TRACE, value)["span_count"]
        return otlp.kept_summary(key, value, fmt)["span_count"]

    def _fold(self, decided: list[tuple[int, bytes, DecisionFacts]], now: int) -> None:
        """Traces every config has now decided wait ``settle_ns`` of simulated time for late
        spans, then go into the counters and out of memory."""
        for _, trace_id, _ in decided:
            facts = self._pending.get(trace_id)
            if facts is not None and facts.decided:
                del self._pending[trace_id]
                self._settling[trace_id] = (facts, now)
        settling = self._settling
        while settling:
            trace_id, (facts, at) = next(iter(settling.items()))
            if at + self.settle_ns > now and len(settling) <= _SETTLING_MAX:
                break
            del settling[trace_id]
            self._count(trace_id, facts)

    def _count(self, trace_id: bytes, facts: TraceFacts) -> None:
        self._folded[trace_id] = None
        if len(self._folded) > _FOLDED_MEMORY:
            self._folded.popitem(last=False)
        key = facts.root_key
        if key in self.root_counts or len(self.root_counts) < 1_000:
            self.root_counts[key] += 1
        for fig, decision in zip(self.figures, facts.decisions):
            fig.add_trace(facts, decision)
        if self.diff is not None:
            cand, cur = facts.decisions
            if cand.keep != cur.keep:
                side, d = ("only_candidate", cand) if cand.keep else ("only_current", cur)
                self.diff.add(
                    side,
                    trace_id,
                    {
                        "trace_id": trace_id.hex(),
                        "root_service": facts.root_key[0],
                        "root_operation": self._protect_name(facts.root_operation) if facts.root_service else "",
                        "policy": d.policy,
                        "reason": d.reason,
                    },
                )

    # ------------------------------------------------------------------ re-keyed copies
    def _rekeyed(self, i: int, key: bytes | None, partition: int | None, value: bytes) -> None:
        """A copy onto the partition it was written to: the one the job named (a copy of several
        traces bound for one partition has no key), else where its key's murmur2 puts it."""
        if partition is not None:
            p = partition
        else:
            n = max(max(self.partitions, default=0) + 1, 1)
            p = canonical_partition(key, n) if key is not None and len(key) == 16 else 0
        self._rekeyed_offsets[(i, p)] += 1
        self._refeed[i].append(Received(p, _REKEYED_OFFSET_BASE + self._rekeyed_offsets[(i, p)], key, value))

    def _refeed_take(self, i: int, now: int) -> list[Received]:
        items, self._refeed[i] = self._refeed[i], []
        return items

    def _refeed_all(self, now: int) -> None:
        for i, job in enumerate(self.jobs):
            items = self._refeed_take(i, now)
            if items:
                job.ingest(items, now)

    # ------------------------------------------------------------------ results
    @property
    def undecided(self) -> int:
        return len(self._pending)

    def input_json(self, source: str) -> dict:
        return {
            "source": source,
            "messages": self.messages,
            "spans": self.spans,
            "first_event_ms": (self.first_ns or 0) // 1_000_000,
            "last_event_ms": self.last_ns // 1_000_000,
            "partitions": sorted(self.partitions),
            "invalid_messages": self.invalid,
            "late_spans": self.late_spans,
        }

    def result(self, source: str) -> dict:
        first, last = (self.first_ns or 0), self.last_ns
        seconds = span_s(first, last)
        buckets = buckets_for(first // _NS_PER_S, last // _NS_PER_S) if self.spans else []
        configs = []
        for i, fig in enumerate(self.figures):
            examples = [
                {"trace_id": tid.hex(), "why": why, **self._example(i, values)}
                for why, tid, values in fig.examples.choose(self.root_counts)
            ]
            c = fig.to_json(seconds, buckets, self.input_at, examples)
            c["undecided"] = self.undecided
            configs.append(c)
        diff = self.diff.to_json() if self.diff is not None else None  # null: no --against
        return {"kind": "simulation", "input": self.input_json(source), "configs": configs, "diff": diff}

    def _example(self, i: int, values: list[bytes]) -> dict:
        """The example's spans as they were written to traces.kept (protected), with only their
        ``sampling.*`` attributes — never another attribute value."""
        fmt = self.configs[i].config.emit.format
        spans = []
        policy = ""
        for value in values:
            if fmt == "avro":
                rec = avro.decode(avro.KEPT_TRACE, value)
                policy = policy or rec["policy"]
                for b in rec["batches"]:
                    for s in b["spans"]:
                        spans.append((b["service"], s, s.get("attributes") or {}))
            else:
                req = otlp.parse_request(value, fmt)
                for rs in req.resource_spans:
                    service = otlp._service(rs.resource)
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            s = {
                                "span_id": sp.span_id,
                                "parent_span_id": sp.parent_span_id or None,
                                "name": sp.name,
                                "start_time_unix_nano": sp.start_time_unix_nano,
                                "end_time_unix_nano": sp.end_time_unix_nano,
                                "status_code": otlp.STATUS[sp.status.code] if 0 <= sp.status.code < 3 else "UNSET",
                            }
                            spans.append((service, s, otlp.attrs_to_py(sp.attributes)))
        t0 = min((s["start_time_unix_nano"] for _, s, _ in spans), default=0)
        rows = []
        for service, s, attrs in spans:
            sampling = {k: v for k, v in attrs.items() if k.startswith("sampling.")}
            policy = policy or str(sampling.get("sampling.policy", ""))
            rows.append(
                {
                    "span_id": s["span_id"].hex(),
                    "parent_span_id": s["parent_span_id"].hex() if s.get("parent_span_id") else None,
                    "service": service,
                    "name": s["name"],
                    "start_ms": round((s["start_time_unix_nano"] - t0) / 1e6, 3),
                    "duration_ms": round((s["end_time_unix_nano"] - s["start_time_unix_nano"]) / 1e6, 3),
                    "status": s["status_code"],
                    "sampling": dict(sorted(sampling.items())),
                }
            )
        rows.sort(key=lambda r: (r["start_ms"], r["span_id"]))
        return {"policy": policy, "trace_start_ms": t0 // 1_000_000, "spans": rows}


def _simulation_config(config: Config) -> Config:
    return config.model_copy(update={"job": config.job.model_copy(update={"processing_guarantee": "at_least_once"})})


def _kept_header_reader():
    """Reads only the leading fields of a ``KeptTrace`` (up to ``span_count``): Avro binary is
    positional, so a reader given the leading fields as the writer schema stops before the spans
    — the counts of a kept record without decoding its spans."""
    schema = avro.raw_schema(avro.KEPT_TRACE)
    names = [f["name"] for f in schema["fields"]]
    head = {**schema, "fields": schema["fields"][: names.index("span_count") + 1]}
    parsed = fastavro.parse_schema(head)

    def read(value: bytes) -> dict:
        return fastavro.schemaless_reader(io.BytesIO(value), parsed, None)

    return read
