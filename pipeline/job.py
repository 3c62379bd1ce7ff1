"""The job's synchronous core: ingest → assemble → decide → emit records, SLIs beside.

No Kafka here: ``ingest`` takes received messages, ``collect`` returns an ``Outbox`` of records to
produce, each with the input ``Hold``s it discharges. ``pipeline.app`` produces the outbox, waits
for the broker's acks, then calls ``delivered`` and acks ``ready`` messages in offset order — so
an input offset is committed only after everything derived from it is durably written.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from operators.assemble import TraceAssembler, TraceBuffer
from operators.commit import CommitTracker, Hold
from operators.decide import Decision, DecisionEngine
from operators.decision_cache import DROPPED, DecisionCache
from operators.privacy.sanitize import sanitize_span_name
from operators.service_graph import ServiceGraph
from operators.sli import SliWindows, WindowAggregate, window_record
from operators.slo import SloTracker
from operators.span_times import SpanTimeBounds
from operators.trace import TraceView
from operators.tracestate import with_threshold
from pipeline import metrics
from pipeline.codecs import avro, otlp
from pipeline.config import Config
from pipeline.kafka.partitioner import canonical_partition
from pipeline.policies import build_engine
from pipeline.privacy import audit_record, build_protector
from pipeline.slo_rules import objectives as slo_objectives

_ZERO_TRACE_ID = bytes(16)
# librdkafka's producer limit (message.max.bytes) less headroom for the record batch framing and key
MAX_RECORD_BYTES = 1_000_000 - 4_096
_RESUME_FRACTION = 0.8  # backpressure: input resumes under this fraction of both bounds
# kept because a kept trace links to it (sampling.follow_links): probability 0 → adjusted count 0,
# so estimates summed over kept traces are unchanged by traces kept only as context
FOLLOWED_LINK = Decision(True, "follow_links", "linked_from_kept_trace", probability=0.0)
# label children bound once: .labels() per message would cost a dict lookup and a lock each time
_BUFFERED = metrics.MESSAGES.labels("buffered")
_LATE_KEPT = metrics.MESSAGES.labels("late_kept")
_LATE_DROPPED = metrics.MESSAGES.labels("late_dropped")
_REPLAYED = metrics.MESSAGES.labels("replayed_already_emitted")
_TOO_LARGE_TO_REKEY = metrics.MESSAGES.labels("too_large_to_rekey")
_LATE_SPANS_KEPT = metrics.LATE_SPANS.labels("kept")
_LATE_SPANS_DROPPED = metrics.LATE_SPANS.labels("dropped")
_LATE_SPANS_REPLAYED = metrics.LATE_SPANS.labels("replayed")


@dataclass(slots=True)
class Received:
    """One Kafka message as the job sees it; ``ref`` is whatever the caller acks later."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ref: Any = None


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    holds: list[Hold] = field(default_factory=list)
    partition: int | None = None  # None: by key (murmur2, as every Kafka client); set for the decision log


@dataclass(slots=True)
class Outbox:
    records: list[Record] = field(default_factory=list)
    kept_traces: int = 0
    dropped_traces: int = 0
    decision_points: list[int] = field(default_factory=list)  # when each decided trace became due (ns)
    # exactly_once: partition → highest input offset whose side outputs (SLI partials, dead letters,
    # re-keyed copies) are in ``records``; committed as offset metadata (pipeline.kafka.checkpoint)
    checkpoints: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)


class Job:
    """One worker's synchronous core: it owns the per-trace buffers, the decisions and their cache,
    the SLI windows and the commit tracker of the partitions it holds, and turns received messages
    into output records whose ``Hold``s say when each input offset may be committed.
    It never touches Kafka, a clock or a thread (time comes in as ``now_ns``), never emits a kept
    trace the protector has not seen while privacy is on, and never lets an offset become
    committable before everything derived from it is delivered."""

    def __init__(self, config: Config, worker_id: str | None = None, protector=None):
        self.config = config
        self.worker_id = worker_id or config.job.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        a = config.assemble
        # backpressure: the app pauses input at the bound (over_bound); the assembler forces early
        # decisions at it only in overflow: force_decision — and in event time, where paused input
        # freezes the watermarks: there it seals the oldest deadlines down to the resume mark
        bounded = a.overflow == "force_decision" or a.time == "event"
        self.assembler = TraceAssembler(
            decision_wait_ns=a.decision_wait_ms * 1_000_000,
            max_buffered_spans=a.max_buffered_spans if bounded else 1 << 62,
            max_buffered_bytes=a.max_buffered_bytes if bounded else 1 << 62,
            resume_fraction=_RESUME_FRACTION if a.overflow == "backpressure" else 1.0,
            max_spans_per_trace=a.max_spans_per_trace,
            max_trace_bytes=a.max_trace_bytes,
            event_time=a.time == "event",
            allowed_lateness_ns=a.allowed_lateness_ms * 1_000_000,
            idle_partition_ns=a.idle_partition_ms * 1_000_000,
            # buffer raw bytes only and decode the headers again at the decision (measured, beyond
            # the raw bytes: decoded Avro spans kept cost 1,177 B per buffered span, parsed OTLP
            # ~900 B; raw bytes and counts ~90 B; see _decide and `make bench`)
            keep_spans=False,
            root_quiet_gap_ns=a.root_quiet_gap_ms * 1_000_000,
        )
        # recent decisions for late and replayed spans; the durable copy is topics.decisions
        self.decisions = DecisionCache(a.decision_cache_size, a.dropped_cache_size)
        self.exactly_once = config.job.processing_guarantee == "exactly_once"
        # the input topic's partition count, set by the data plane: a message off its trace's
        # canonical partition is re-keyed (0: unknown, only the key is checked)
        self.input_partitions = 0
        # the largest record the outputs take (the data plane sets it from the broker's topic configs)
        self.max_record_bytes = MAX_RECORD_BYTES
        self._processed: dict[int, int] = {}  # partition → highest offset ingested (→ Outbox.checkpoints)
        self._replayed_through: dict[int, int] = {}  # partition → restored checkpoint: side outputs written up to here
        self.engine: DecisionEngine = build_engine(config.sampling)
        self.dry_run = config.sampling.dry_run
        self.follow_links = config.sampling.follow_links
        self._link_hints: OrderedDict[bytes, None] = OrderedDict()  # traces linked from kept traces, bounded
        s = config.sli
        self.sli = SliWindows(
            window_ns=int(s.window_seconds * 1e9),
            grace_ns=int(s.grace_seconds * 1e9),
            relative_accuracy=s.relative_accuracy,
            max_services=s.max_services,
            max_operations=s.max_operations_per_service,
            # operation = span name through the protector (ids → {id}, PII detectors) when privacy
            # is on, else the plain span-name sanitizer; memoized per raw name inside SliWindows
            sanitize=lambda name: (
                self.protector.dimension(name) if self.protector is not None else sanitize_span_name(name)
            ),
        )
        self.slo = SloTracker(slo_objectives(config))  # exact SLO event counts → metrics
        self.graph = ServiceGraph(max_edges=s.max_services)  # client→server edges of every decided trace
        self.tracker = CommitTracker()
        t = config.topics
        self.input_topic = t.spans_raw.name
        self.kept_topic = t.traces_kept.name
        self.sli_topic = t.sli_windows.name
        self.deadletter_topic = t.deadletter.name
        self.pii_audit_topic = t.pii_audit.name
        self.decisions_topic = t.decisions.name
        # PII protection of kept traces (privacy.enabled): keys from env/key file, or injected.
        self.protector = (
            protector
            if protector is not None
            else (build_protector(config.privacy) if config.privacy.enabled else None)
        )
        self._pending: list[Record] = []  # produced on the next collect: dead letters, late spans, re-keys
        # event time: traces decided during ingest; their records share _pending, so decisions, late
        # spans and dead letters keep the order of the input messages that caused them
        self._sealed = Outbox(self._pending)
        self.event_time = a.time == "event"
        self.ingest_format = config.ingest.format
        self.emit_format = config.emit.format
        self.rekey = config.ingest.rekey
        # times are checked at ingest, so none reaches a window, a watermark or an encoder unchecked
        self.time_bounds = SpanTimeBounds(self.sli.window_ns, config.ingest.max_clock_skew_ms * 1_000_000)
        self._decode_detail = avro.decode_detail if self.ingest_format == "avro" else otlp.decode_detail

    # ---------------------------------------------------------------- ingest (hot path)
    def ingest(self, messages: Iterable[Received], now_ns: int) -> None:
        if self.ingest_format != "avro":
            return self._ingest_otlp(messages, now_ns)
        sli, tracker, time_violation = self.sli, self.tracker, self.time_bounds.violation
        n_spans = 0
        for msg in messages:
            value = msg.value
            replay = self._replayed(msg)
            try:
                if not value:
                    raise _Malformed("empty_value", "the message value is empty or null (tombstone)")
                try:
                    batch = avro.decode_batch(value)
                except Exception as exc:  # noqa: BLE001 - fastavro raises many types for bad bytes
                    raise _Malformed(
                        "decode_error", f"not a {avro.SPAN_BATCH} record: {type(exc).__name__}: {_safe(exc)}"
                    ) from None
                trace_id = batch["trace_id"]
                spans = batch["spans"]
                if not spans:
                    raise _Malformed("empty_batch", "the batch has no spans")
                if trace_id == _ZERO_TRACE_ID:
                    raise _Malformed("invalid_trace_id", "the trace ID is all zeros")
                bad_time = time_violation(spans, now_ns)
                if bad_time:
                    raise _Malformed("invalid_timestamp", bad_time)
            except _Malformed as bad:
                self._reject(msg, bad, now_ns, replay)
                continue
            if self.rekey and self._misplaced(msg, trace_id):
                # Spans of one trace must meet on one partition: re-publish keyed by trace ID —
                # unless the copy could not be written (larger than a record may be): then it is
                # buffered where it arrived rather than failing every transaction
                if len(value) <= self.max_record_bytes:
                    if replay:
                        tracker.track(msg.partition, msg.offset, msg.ref, 0)
                        continue
                    hold = tracker.track(msg.partition, msg.offset, msg.ref, 1)
                    self._pending.append(Record(self.input_topic, trace_id, value, [hold]))
                    metrics.MESSAGES.labels("rekeyed").inc()
                    continue
                _TOO_LARGE_TO_REKEY.inc()
            service = batch["service"]
            for span in spans:
                span["service"] = service
            n_spans += len(spans)
            hold = tracker.track(msg.partition, msg.offset, msg.ref, 1)
            if not replay:
                hold.count += sli.add(msg.partition, service, spans, hold)
            # the decoded batch rides along so a kept trace is not decoded twice
            self._route(trace_id, msg.partition, spans, (hold, value, batch), now_ns)
        # gauges first: a scrape (another thread) that sees these spans counted must also see them
        # buffered and uncommitted — else "ingested everything, nothing pending" reads as drained
        self._buffer_gauges()
        metrics.SPANS.inc(n_spans)

    def _misplaced(self, msg: Received, trace_id: bytes) -> bool:
        """True when ``msg`` must be re-keyed: not keyed by its trace ID (16 bytes; OTLP also 32 hex
        characters), or — with the input's partition count known — not on the trace's canonical
        partition (pipeline.kafka.partitioner), as when a producer keyed it right but partitioned it
        with another hash (librdkafka's default CRC32, say)."""
        if not otlp.key_matches(msg.key, trace_id):
            return True
        n = self.input_partitions
        return bool(n) and canonical_partition(trace_id, n) != msg.partition

    def _replayed(self, msg: Received) -> bool:
        """Note ``msg`` as ingested (for the next checkpoint). True when the restored checkpoint says
        its side outputs (SLI counts, dead letter, re-keyed copy) are written already: only its trace
        routing runs again, and that dedups itself (exactly_once)."""
        self._processed[msg.partition] = msg.offset
        through = self._replayed_through
        return bool(through) and msg.offset <= through.get(msg.partition, -1)

    def _reject(self, msg: Received, bad: _Malformed, now_ns: int, replay: bool) -> None:
        """A malformed message: to the dead-letter topic (holding its offset until written), unless
        a replay finds it dead-lettered already."""
        if replay:
            self.tracker.track(msg.partition, msg.offset, msg.ref, 0)
            return
        hold = self.tracker.track(msg.partition, msg.offset, msg.ref, 1)
        self._pending.append(self._dead_letter(msg, bad.reason, bad.detail, now_ns, hold))

    def _route(self, trace_id: bytes, partition: int, spans: list, fragment: tuple, now_ns: int) -> None:
        """Buffer one message's spans of a trace, or — when the trace was decided already — make
        them follow that decision: dropped → released at once; kept → a late KeptTrace, unless
        this very message is already in traces.kept (a replay after a crash: skipped)."""
        known = self.decisions.get(trace_id)
        if known is None:
            if not self.assembler.keep_spans:
                fragment = (fragment[0], fragment[1], None)  # the decoded batch is not kept (memory)
            sealed = self.assembler.add(trace_id, partition, spans, fragment, now_ns, len(fragment[1]))
            _BUFFERED.inc()
            if sealed:  # event time: the watermark passed these traces; either time: a span/byte limit
                for buf in sealed:
                    # decided now, not at the next collect: the trace's next fragments follow this decision
                    self._decide(buf, buf.decided_at_ns if self.event_time else now_ns, self._sealed, now_ns)
        elif known is DROPPED:
            self.tracker.release(fragment[0])
            _LATE_DROPPED.inc()
            _LATE_SPANS_DROPPED.inc(len(spans))
        else:
            hold = fragment[0]
            if hold.offset in known.offsets:
                self.tracker.release(hold)
                _REPLAYED.inc()
                _LATE_SPANS_REPLAYED.inc(len(spans))
                return
            known.offsets.add(hold.offset)
            self._pending.extend(self._kept_records(trace_id, known.decision, [fragment], now_ns, late=True))
            self._pending.append(
                self._decision_record(trace_id, known.decision, known.partition, known.offsets, known.decided_at_ns)
            )
            _LATE_KEPT.inc()
            _LATE_SPANS_KEPT.inc(len(spans))

    # ---------------------------------------------------------------- decide + emit
    def collect(self, now_ns: int, flush_all_windows: bool = False) -> Outbox:
        """Decide every trace whose decision point has come and close due SLI windows."""
        out = self._sealed  # its records are _pending
        self._pending = []
        self._sealed = Outbox(self._pending)
        for buf in self.assembler.due(now_ns):
            # event time: due() releases only idle partitions and memory-bound traces; their
            # decision time is the watermark the assembler recorded (0 in processing time)
            self._decide(buf, buf.decided_at_ns or now_ns, out, now_ns)
        # exactly_once: every open window goes out as a partial with this transaction, so the
        # checkpoint below can say "counted and written" for every offset ingested so far
        for window in self.sli.due(now_ns, flush_all=flush_all_windows or self.exactly_once):
            out.records.append(
                Record(self.sli_topic, window.service.encode(), self._sli_record(window, now_ns), window.holds)
            )
            metrics.SLI_SPANS.labels(window.service, window.span_kind, window.status).inc(window.span_count)
            metrics.SLI_LATENCY_SUM.labels(window.service, window.span_kind, window.status).inc(window.sum_ms / 1_000.0)
            if self.slo.objectives:
                for name, events, bad in self.slo.observe(
                    window.service,
                    window.operation,
                    window.span_kind,
                    window.window_end_ns,
                    window.span_count,
                    window.error_count,
                    window.sketch,
                ):
                    metrics.SLO_EVENTS.labels(name).inc(events)
                    metrics.SLO_BAD_EVENTS.labels(name).inc(bad)
        out.records.extend(self._pending)  # dead letters for corrupt details found while building kept traces
        self._pending.clear()  # (the list stays shared with self._sealed)
        if self.exactly_once:
            out.checkpoints = self._processed
            self._processed = {}
        return out

    def _decide(self, buf: TraceBuffer, decided_ns: int, out: Outbox, now_ns: int) -> None:
        """Decide one released trace: decision record, kept trace (or released holds), metrics.
        ``decided_ns`` is the decision's time (the watermark in event time, else the worker clock)."""
        if not self.assembler.keep_spans:  # only raw bytes were buffered: decode the headers again
            spans, fragments = [], []
            for hold, value, _ in buf.fragments:
                # decoded fine at ingest: same bytes, same result
                if self.ingest_format == "avro":
                    batch = avro.decode_batch(value)
                    service = batch["service"]
                    for span in batch["spans"]:
                        span["service"] = service
                    spans.extend(batch["spans"])
                else:  # the message may hold other traces too (ingest.rekey: false)
                    batch = otlp.decode_traces(value, self.ingest_format)[buf.trace_id]
                    spans.extend(batch.spans)
                fragments.append((hold, value, batch))
            buf.spans, buf.fragments = spans, fragments
        self.graph.add_trace(buf.spans)
        view = TraceView(
            buf.trace_id, buf.spans, now_ns=decided_ns, size_bytes=buf.size_bytes, decode_detail=self._decode_detail
        )  # attributes decoded only if a policy asks
        decision = self.engine.decide(view)
        if self._link_hints and buf.trace_id in self._link_hints:
            del self._link_hints[buf.trace_id]
            if decision.vetoed:  # a drop rule (health checks, a tenant never stored) wins over links
                metrics.FOLLOW_LINKS.labels("dropped_by_policy").inc()
            elif not decision.keep:  # context for a kept trace that links here; stands for no traces
                decision = FOLLOWED_LINK
                metrics.FOLLOW_LINKS.labels("kept").inc()
        if self.dry_run:
            decision = decision.dry_run()  # kept, annotated with what would have happened
        offsets = [fragment[0].offset for fragment in buf.fragments] if decision.keep else ()
        self.decisions.remember(buf.trace_id, decision, buf.partition, offsets, decided_ns)
        out.records.append(self._decision_record(buf.trace_id, decision, buf.partition, offsets, decided_ns))
        metrics.DECISION_POINTS.labels(buf.trigger).inc()
        if self.event_time:
            out.decision_points.append(now_ns)
        else:
            out.decision_points.append(
                buf.deadline_ns
                if buf.trigger == "decision_wait"
                else buf.last_seen_ns + self.assembler.root_quiet_gap_ns
                if buf.trigger == "root_quiet"
                else now_ns
            )
        metrics.TRACES_DECIDED.labels(
            "keep" if decision.would_keep else "drop", decision.policy or "-", buf.forced_reason or "-"
        ).inc()
        if decision.keep:
            out.kept_traces += 1
            metrics.KEPT_SPANS.inc(buf.span_count)
            out.records.extend(
                self._kept_records(buf.trace_id, decision, buf.fragments, decided_ns, forced=buf.forced_reason)
            )
        else:
            out.dropped_traces += 1
            for fragment in buf.fragments:
                self.tracker.release(fragment[0])

    def restore(self, partition: int, records: Iterable[dict], through: int = -1) -> int:
        """Load decision-log records of a newly assigned partition (oldest first) and its checkpoint
        (side outputs of offsets ≤ ``through`` are written). Returns how many decisions were restored."""
        if through >= 0:
            self._replayed_through[partition] = max(self._replayed_through.get(partition, -1), through)
        n = 0
        for r in records:
            if r["trace_id"] == _ZERO_TRACE_ID:  # a checkpoint record written by tailsift ≤ 0.1
                self._replayed_through[partition] = max(
                    self._replayed_through.get(partition, -1), r["processed_through"]
                )
                continue
            decision = Decision(
                r["keep"], r["policy"], r["reason"], r["probability"], r["threshold"], r["dry_run_kept"]
            )
            self.decisions.remember(r["trace_id"], decision, partition, r["emitted_offsets"], r["decided_at_unix_nano"])
            n += 1
        return n

    def delivered(self, records: Iterable[Record]) -> None:
        """The broker acknowledged these records: their inputs' obligations are met."""
        release = self.tracker.release
        for record in records:
            for hold in record.holds:
                release(hold)

    def ready(self) -> list[Hold]:
        """Input messages now safe to commit, in offset order per partition."""
        return self.tracker.ready()

    def revoke(self, partitions: Iterable[int]) -> None:
        """This worker lost partitions: forget their uncommitted state — buffers, open windows, offsets,
        unwritten records, and the decisions those records carried (a decision whose record was never
        written must not make a replayed span look "already emitted"). The new owner rereads the
        uncommitted input and restores written decisions from the log."""
        partitions = set(partitions)
        self.assembler.revoke(partitions)
        self.sli.revoke(partitions)
        self.tracker.revoke(partitions)
        for partition in partitions:
            self._processed.pop(partition, None)
            self._replayed_through.pop(partition, None)
        kept, lost = [], []
        for r in self._pending:
            if r.partition in partitions or any(h.partition in partitions for h in r.holds):
                lost.append(r)
            else:
                kept.append(r)
        self._pending[:] = kept  # the list stays shared with self._sealed
        for r in lost:
            if r.topic == self.decisions_topic:
                self.decisions.forget(r.key)
        # kept decisions of these partitions: the next owner (maybe this worker again) restores them
        # from the log; a stale entry here would carry offsets whose records were never written
        self.decisions.forget_partitions(partitions)

    def reset(self, partitions: Iterable[int]) -> None:
        """Forget all uncommitted state of ``partitions`` (every partition this worker owns) and every
        remembered decision: after a failed transaction the worker rewinds to the committed offsets
        and restores from the log, exactly as after a restart."""
        self.revoke(partitions)
        self._pending.clear()
        self._processed.clear()
        self._replayed_through.clear()
        self.decisions.clear()
        self._link_hints.clear()

    def over_bound(self) -> bool:
        """Buffered spans or bytes at ``assemble.max_buffered_*``: time to pause the input."""
        a = self.config.assemble
        return (
            self.assembler.buffered_spans >= a.max_buffered_spans
            or self.assembler.buffered_bytes >= a.max_buffered_bytes
        )

    def below_resume_mark(self) -> bool:
        """Back under 80 % of both bounds: resume the input (hysteresis, so it does not flap)."""
        a = self.config.assemble
        return (
            self.assembler.buffered_spans < _RESUME_FRACTION * a.max_buffered_spans
            and self.assembler.buffered_bytes < _RESUME_FRACTION * a.max_buffered_bytes
        )

    def _buffer_gauges(self) -> None:
        metrics.TRACES_IN_MEMORY.set(len(self.assembler))
        metrics.SPANS_BUFFERED.set(self.assembler.buffered_spans)
        metrics.BUFFERED_BYTES.set(self.assembler.buffered_bytes)
        metrics.UNCOMMITTED.set(len(self.tracker))
        metrics.OPEN_WINDOWS.set(len(self.sli))

    def update_gauges(self) -> None:
        self._buffer_gauges()
        for edge in self.graph.drain():  # once per tick: .labels() per request would cost a lock each
            metrics.GRAPH_REQUESTS.labels(edge.client, edge.server).inc(edge.requests)
            if edge.failed:
                metrics.GRAPH_FAILED.labels(edge.client, edge.server).inc(edge.failed)
            metrics.GRAPH_SERVER_SECONDS.labels(edge.client, edge.server).inc(edge.sketch.sum / 1_000.0)
        for name, n in self.engine.policy_errors.items():
            metrics.POLICY_ERRORS.labels(name).set(n)
        for policy in self.engine.policies:
            if policy.guard_drops is not None:  # rate_limiting, bytes_limiting, composite
                metrics.POLICY_GUARD_DROPS.labels(policy.name).set(policy.guard_drops)

    # ---------------------------------------------------------------- records
    def _kept_records(
        self,
        trace_id: bytes,
        decision: Decision,
        fragments: list[tuple[Hold, bytes, dict]],
        now_ns: int,
        late: bool = False,
        forced: str = "",
    ) -> list[Record]:
        """Full decode (kept traces only) into a KeptTrace (several parts if it is too large for one
        record), sampling facts on every span.

        A span whose header decoded but whose ``detail`` does not is still kept — its trace was
        judged on sound headers — with ``tailsift.detail_error`` set, and its message is reported
        to the dead-letter topic so the producer can be found.

        Building one record never fails the outbox: a fragment that cannot be converted (an OTLP
        link ID of the wrong length, an event time beyond 2^63 - 1: checked here, not for every
        span at ingest) is dead-lettered with its reason and the rest of the trace is kept; so is
        one whose spans do not encode in ``emit.format`` (``encode_error``: found by encoding
        the fragments one by one, only after the whole record failed). Empty when nothing is left."""
        adjusted = decision.adjusted_count
        reason = decision.reason + (f";forced={forced}" if forced else "")
        sampling_attrs = {
            "sampling.policy": decision.policy,
            "sampling.reason": reason,
            "sampling.adjusted_count": adjusted,
        }
        if late:
            sampling_attrs["sampling.late"] = True
        if decision.dry_run_kept is not None:
            sampling_attrs["sampling.dry_run_kept"] = decision.dry_run_kept
        batches = []
        written: list[tuple[tuple, list[dict]]] = []  # (fragment, its batches) this record carries
        pii_counts: dict[str, int] = {}
        for fragment in fragments:  # (hold, raw bytes, batch decoded at ingest)
            try:
                converted = self._kept_batches(
                    trace_id, fragment, sampling_attrs, decision.threshold, pii_counts, now_ns
                )
            except Exception as exc:  # noqa: BLE001 - one bad fragment must not stop the stream
                self._dead_letter_fragment(trace_id, fragment, exc, now_ns)
                continue
            written.append((fragment, converted))

        def encode_batches(batches: list[dict], part: int = 0, parts: int = 1) -> bytes:
            if self.emit_format != "avro":
                return otlp.encode_request(batches, self.emit_format)
            return avro.encode(
                avro.KEPT_TRACE,
                {
                    "trace_id": trace_id,
                    "policy": decision.policy,
                    "reason": reason,
                    "adjusted_count": adjusted,
                    "decided_at_unix_nano": now_ns,
                    "late": late,
                    "span_count": sum(len(b["spans"]) for b in batches),
                    "batches": batches,
                    "part": part,
                    "parts": parts,
                },
            )

        def encode(parts: list[tuple[tuple, list[dict]]]) -> bytes:
            return encode_batches([b for _, converted in parts for b in converted])

        value = None
        while written and value is None:
            try:
                value = encode(written)
            except Exception:  # noqa: BLE001 - the encoder raises many types for values out of range
                # rare path: find the fragments that do not encode on their own, dead-letter them, retry the rest
                fine = []
                for part in written:
                    try:
                        encode([part])
                    except Exception as exc:  # noqa: BLE001 - as above
                        self._dead_letter_fragment(trace_id, part[0], exc, now_ns)
                    else:
                        fine.append(part)
                if len(fine) == len(written):  # each alone encodes, together they do not: give up on all
                    for part in written:
                        self._dead_letter_fragment(trace_id, part[0], ValueError(), now_ns)
                    fine = []
                written = fine
        if value is None:
            return []
        batches = [b for _, converted in written for b in converted]
        span_count = sum(len(b["spans"]) for b in batches)
        holds = [fragment[0] for fragment, _ in written]
        values = (
            [value]
            if len(value) <= self.max_record_bytes
            else self._split_kept(encode_batches, written, trace_id, now_ns)
        )
        for hold in holds:  # every part holds every input: the offsets commit once all parts are written
            hold.count += len(values) - 1
        if self.follow_links:
            self._follow_links(trace_id, batches)
        if self.protector is not None:
            self._pii_audit(trace_id, pii_counts, holds, now_ns, late, span_count)
        return [Record(self.kept_topic, trace_id, value, list(holds)) for value in values]

    def _split_kept(
        self, encode_batches, written: list[tuple[tuple, list[dict]]], trace_id: bytes, now_ns: int
    ) -> list[bytes]:
        """A kept record larger than ``max_record_bytes`` (the output topics' ``max.message.bytes``
        and the producer's limit) as several parts that each fit: Avro ``KeptTrace`` parts with
        ``part``/``parts``, or several OTLP requests of the same trace. The spans are halved until
        each part fits; a single span that cannot fit alone is dead-lettered (``span_too_large``) and
        left out — no record can fail the transaction for its size."""
        limit = self.max_record_bytes
        parts: list[list[dict]] = []
        too_large: list[tuple] = []  # fragments (input messages) with a span too large for any record

        def fit(units: list[tuple[tuple, dict]]) -> None:  # (fragment, batch) units
            if len(encode_batches([b for _, b in units])) <= limit:
                parts.append([b for _, b in units])
            elif len(units) > 1:
                fit(units[: len(units) // 2])
                fit(units[len(units) // 2 :])
            elif len(units[0][1]["spans"]) > 1:
                fragment, b = units[0]
                half = len(b["spans"]) // 2
                fit([(fragment, {**b, "spans": b["spans"][:half]})])
                fit([(fragment, {**b, "spans": b["spans"][half:]})])
            elif units[0][1]["spans"] and all(f is not units[0][0] for f in too_large):
                too_large.append(units[0][0])

        fit([(fragment, b) for fragment, converted in written for b in converted])
        for hold, value, _ in too_large:
            msg = Received(hold.partition, hold.offset, trace_id, value)
            detail = f"a span of this message does not fit in one record of at most {limit} bytes"
            self._pending.append(self._dead_letter(msg, "span_too_large", detail, now_ns, None))
        if not parts:  # every span was too large: an empty part still carries the decision's facts
            parts = [[]]
        return [encode_batches(part, i, len(parts)) for i, part in enumerate(parts)]

    def _kept_batches(
        self, trace_id: bytes, fragment: tuple, sampling_attrs: dict, th: int | None, pii_counts: dict, now_ns: int
    ) -> list[dict]:
        """One input message's spans of a kept trace: fully decoded, protected, annotated."""
        hold, value, batch = fragment
        protector = self.protector
        if type(batch) is otlp.OtlpTrace:  # OTLP input: convert this trace's protobuf spans to dicts
            out = otlp.kept_batches(batch)
            for b in out:
                for span in b["spans"]:
                    if protector is not None:
                        protector.protect_span(span, pii_counts)
                    span["attributes"].update(sampling_attrs)
                    if th is not None:  # OTEP 235: record the consistent sampling threshold in tracestate
                        span["trace_state"] = with_threshold(span["trace_state"], th)
                if protector is not None:
                    protector.protect_batch(b, pii_counts)
            return out
        bad_detail = ""
        for span in batch["spans"]:
            undecodable = False
            try:
                detail = avro.decode_detail(span.pop("detail"))
            except Exception as exc:  # noqa: BLE001 - corrupt detail must not stop the stream
                bad_detail = f"{type(exc).__name__}: {_safe(exc)}"
                detail, undecodable = {**avro.EMPTY_DETAIL, "attributes": {}}, True
            span.update(detail)
            if protector is not None:
                protector.protect_span(span, pii_counts)
            if undecodable:  # tailsift's own annotations are added after protection
                span["attributes"]["tailsift.detail_error"] = "undecodable span detail"
            span["attributes"].update(sampling_attrs)
            if th is not None:
                span["trace_state"] = with_threshold(span["trace_state"], th)
        try:
            batch["resource"] = avro.decode_resource(batch["resource"])
        except Exception as exc:  # noqa: BLE001 - as for a corrupt detail: keep the spans, report it
            bad_detail = f"resource: {type(exc).__name__}: {_safe(exc)}"
            batch["resource"] = {}
        if protector is not None:
            protector.protect_batch(batch, pii_counts)
        if bad_detail.startswith("resource: "):  # added after protection, as for spans
            batch["resource"]["tailsift.detail_error"] = "undecodable resource"
        if bad_detail:
            msg = Received(hold.partition, hold.offset, trace_id, value)
            self._pending.append(self._dead_letter(msg, "detail_decode_error", bad_detail, now_ns, None))
        return [batch]

    def _dead_letter_fragment(self, trace_id: bytes, fragment: tuple, exc: Exception, now_ns: int) -> None:
        """A kept trace's input message whose spans cannot be written: to the dead-letter topic,
        holding its offset there instead of on the kept record. The detail names the exception
        type only: encoder messages quote the offending values."""
        hold, value, _ = fragment
        if isinstance(exc, otlp.InvalidSpan):
            reason, detail = exc.reason, str(exc)
        else:
            reason, detail = "encode_error", f"kept trace not encodable as {self.emit_format}: {type(exc).__name__}"
        msg = Received(hold.partition, hold.offset, trace_id, value)
        self._pending.append(self._dead_letter(msg, reason, detail, now_ns, hold))

    def _follow_links(self, trace_id: bytes, batches: list[dict]) -> None:
        """Note the traces this kept trace's spans link to, so they are kept when decided here."""
        for batch in batches:
            for span in batch["spans"]:
                for link in span.get("links") or ():
                    linked = link["trace_id"]
                    if linked == trace_id or linked in self._link_hints:
                        continue
                    known = self.decisions.get(linked)
                    if known is DROPPED:
                        metrics.FOLLOW_LINKS.labels("too_late").inc()
                    elif known is not None:
                        metrics.FOLLOW_LINKS.labels("already_kept").inc()
                    else:
                        self._link_hints[linked] = None
                        if len(self._link_hints) > self.decisions.kept_size:
                            self._link_hints.popitem(last=False)
                            metrics.FOLLOW_LINKS.labels("not_here").inc()

    def _ingest_otlp(self, messages: Iterable[Received], now_ns: int) -> None:
        """OTLP input: header-only decode split per trace ID. A message feeding N traces holds N
        trace obligations; one not keyed by its single trace ID is re-published per trace (rekey)."""
        sli, tracker, fmt, time_bounds = self.sli, self.tracker, self.ingest_format, self.time_bounds
        n_spans = 0
        for msg in messages:
            value = msg.value
            replay = self._replayed(msg)
            try:
                if not value:
                    raise _Malformed("empty_value", "the message value is empty or null (tombstone)")
                try:
                    traces = otlp.decode_traces(value, fmt, time_bounds, now_ns)
                except otlp.InvalidSpan as exc:  # its text holds lengths and bounds, never id bytes
                    raise _Malformed(exc.reason, str(exc)) from None
                except Exception as exc:  # noqa: BLE001 - protobuf/json raise many types for bad bytes
                    raise _Malformed(
                        "decode_error",
                        f"not an OTLP ExportTraceServiceRequest ({fmt}): {type(exc).__name__}: {_safe(exc)}",
                    ) from None
                if not traces:
                    raise _Malformed("empty_batch", "the request has no spans")
            except _Malformed as bad:
                self._reject(msg, bad, now_ns, replay)
                continue
            if self.rekey and (len(traces) > 1 or self._misplaced(msg, next(iter(traces)))):
                # Spans of one trace must meet on one partition: re-publish per trace, keyed by trace
                # ID — unless a copy could not be written (larger than a record may be): then the
                # message is buffered where it arrived rather than failing every transaction
                parts = [(t, value if len(traces) == 1 else otlp.split_request(tr, fmt)) for t, tr in traces.items()]
                if all(len(part) <= self.max_record_bytes for _, part in parts):
                    if replay:
                        tracker.track(msg.partition, msg.offset, msg.ref, 0)
                        continue
                    hold = tracker.track(msg.partition, msg.offset, msg.ref, len(parts))
                    for trace_id, part in parts:
                        self._pending.append(Record(self.input_topic, trace_id, part, [hold]))
                    metrics.MESSAGES.labels("rekeyed").inc()
                    continue
                _TOO_LARGE_TO_REKEY.inc()
            hold = tracker.track(msg.partition, msg.offset, msg.ref, len(traces))
            for trace_id, trace in traces.items():
                n_spans += len(trace.spans)
                if not replay:
                    for group in trace.groups:  # [resource_spans, scope_spans, service, headers]
                        hold.count += sli.add(msg.partition, group[2], group[3], hold)
                self._route(trace_id, msg.partition, trace.spans, (hold, value, trace), now_ns)
        # gauges first: a scrape (another thread) that sees these spans counted must also see them
        # buffered and uncommitted — else "ingested everything, nothing pending" reads as drained
        self._buffer_gauges()
        metrics.SPANS.inc(n_spans)

    def _pii_audit(
        self, trace_id: bytes, counts: dict[str, int], holds: list[Hold], now_ns: int, late: bool, span_count: int
    ) -> None:
        """Counts (never values) of what protection changed → metrics and, per kept record, a
        PiiAudit record that holds its inputs like the kept record does."""
        for name, n in counts.items():
            kind, _, label = name.partition(":")
            (metrics.PII_DETECTIONS if kind == "detector" else metrics.PII_RULE_ACTIONS).labels(label).inc(n)
        if not self.config.privacy.audit:
            return
        for hold in holds:
            hold.count += 1
        value = audit_record(trace_id, counts, self.protector.tokenizer.key_id, now_ns, late, span_count)
        self._pending.append(Record(self.pii_audit_topic, trace_id, value, list(holds)))

    def _decision_record(
        self, trace_id: bytes, decision: Decision, partition: int, offsets: Iterable[int], decided_at_ns: int
    ) -> Record:
        """The decision-log entry, written to the trace's input partition number."""
        value = avro.encode(
            avro.TRACE_DECISION,
            {
                "trace_id": trace_id,
                "keep": decision.keep,
                "policy": decision.policy,
                "reason": decision.reason,
                "probability": decision.probability,
                "threshold": decision.threshold,
                "dry_run_kept": decision.dry_run_kept,
                "decided_at_unix_nano": decided_at_ns,
                "input_partition": partition,
                "emitted_offsets": sorted(offsets),
                "processed_through": -1,
            },
        )
        return Record(self.decisions_topic, trace_id, value, [], partition)

    def _sli_record(self, w: WindowAggregate, now_ns: int) -> bytes:
        return avro.encode(avro.SLI_WINDOW, window_record(w, self.worker_id, now_ns))

    def _dead_letter(self, msg: Received, reason: str, detail: str, now_ns: int, hold: Hold | None) -> Record:
        metrics.DEADLETTERS.labels(reason).inc()
        value = msg.value or b""
        record = avro.encode(
            avro.DEAD_LETTER,
            {
                "source_topic": self.input_topic,
                "partition": msg.partition,
                "offset": msg.offset,
                "reason": reason,
                "detail": detail,
                "value_size": len(value),
                "value_sha256": hashlib.sha256(value).hexdigest(),
                "key_size": len(msg.key or b""),
                "received_at_unix_nano": now_ns,
            },
        )
        return Record(
            self.deadletter_topic,
            f"{self.input_topic}/{msg.partition}/{msg.offset}".encode(),
            record,
            [hold] if hold is not None else [],
        )


class _Malformed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _safe(exc: BaseException) -> str:
    """A decoder's message, cut short and stripped of anything that may echo payload bytes."""
    text = str(exc)
    if len(text) > 120 or any(ord(c) < 32 or ord(c) > 126 for c in text):
        return "(message withheld: may contain payload bytes)"
    return text
