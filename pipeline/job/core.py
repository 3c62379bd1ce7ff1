"""The job: one worker's state, and the stages (``ingest`` → ``route`` → ``decide`` → ``protect`` →
``emit``) as mixins over it; plus what the data plane calls between batches — restore, delivered,
ready, revoke, reset, backpressure marks, gauges."""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Iterable

from operators.assemble import TraceAssembler
from operators.commit import CommitTracker, Hold
from operators.decide import Decision, DecisionEngine
from operators.decision_cache import DecisionCache
from operators.privacy.sanitize import sanitize_span_name
from operators.service_graph import ServiceGraph
from operators.slo import SloTracker
from operators.span_times import SpanTimeBounds
from pipeline import codecs, metrics
from pipeline.codecs.avro_kept import AvroKeptWriter
from pipeline.codecs.avro_kept_native import AVAILABLE as NATIVE_AVRO_KEPT_BUILT
from pipeline.codecs.avro_kept_native import NativeAvroKeptWriter
from pipeline.codecs.interface import SpanLimits
from pipeline.codecs.native import NativeCodec
from pipeline.codecs.otlp_kept import KeptWriter
from pipeline.codecs.otlp_kept_native import AVAILABLE as NATIVE_KEPT_BUILT
from pipeline.codecs.otlp_kept_native import NativeKeptWriter
from pipeline.config import Config
from pipeline.job.decide import Decide
from pipeline.job.emit import EmitRecords
from pipeline.job.ingest import Ingest
from pipeline.job.protect import Protect
from pipeline.job.records import MAX_RECORD_BYTES, Outbox, Record
from pipeline.job.route import Route
from pipeline.job.sli import sli_windows
from pipeline.kafka.partitioner import PARTITIONINGS
from pipeline.policies import build_engine
from pipeline.privacy import build_protector
from pipeline.slo_rules import objectives as slo_objectives

_ZERO_TRACE_ID = bytes(16)
_RESUME_FRACTION = 0.8  # backpressure: input resumes under this fraction of both bounds


class Job(Ingest, Route, Decide, Protect, EmitRecords):
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
            keep_spans=False,  # raw bytes only: see Route._route
            root_quiet_gap_ns=a.root_quiet_gap_ms * 1_000_000,
            # processing time: wait also for a partition read behind real time (operators.read_progress);
            # at the bound backpressure pauses the input, so there held traces stop waiting for it
            max_wait_ns=int(a.backlog_wait_factor * a.decision_wait_ms * 1_000_000),
            max_clock_skew_ns=config.ingest.max_clock_skew_ms * 1_000_000,
            backlog_yield_spans=a.max_buffered_spans if a.overflow == "backpressure" else 1 << 62,
            backlog_yield_bytes=a.max_buffered_bytes if a.overflow == "backpressure" else 1 << 62,
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
        # job.core native: the windows count every span in Rust (pipeline/job/sli.py)
        self.sli = sli_windows(
            config.ingest_core(),
            window_ns=int(s.window_seconds * 1e9),
            grace_ns=int(s.grace_seconds * 1e9),
            relative_accuracy=s.relative_accuracy,
            max_services=s.max_services,
            max_operations=s.max_operations_per_service,
            # operation = span name through the protector (ids → {id}, PII detectors) when privacy
            # is on, else the plain span-name sanitizer; memoized per raw name inside the windows
            sanitize=lambda name: (
                self.protector.dimension(name) if self.protector is not None else sanitize_span_name(name)
            ),
            # service.name is producer text as well: a label of sli.windows and of metrics
            service_label=lambda service: self.protector.dimension(service) if self.protector is not None else service,
        )
        self.slo = SloTracker(slo_objectives(config))  # exact SLO event counts → metrics
        # client→server edges of every decided trace; their service names are metric labels
        self.graph = ServiceGraph(max_edges=s.max_services, service_label=self.sli.service_label)
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
        # input partition → when (worker clock, ns) a message read from it was last re-keyed
        self.rekeyed_ns: dict[int, int] = {}
        self.partitioning = PARTITIONINGS[config.ingest.partitioning]  # the canonical key and partition
        # times are checked at ingest, so none reaches a window, a watermark or an encoder unchecked
        self.time_bounds = SpanTimeBounds(self.sli.window_ns, config.ingest.max_clock_skew_ms * 1_000_000)
        limits = SpanLimits(config.ingest.max_span_bytes, config.ingest.max_attributes_per_span)
        # spans.raw; job.core: the ingest decode in the Rust core when built (README "Design")
        self.codec = codecs.for_format(self.ingest_format, self.time_bounds, limits, config.ingest_core())
        self.emit_codec = codecs.for_format(self.emit_format)  # traces.kept
        # OTLP kept as otlp_proto: spans written from their own bytes where protection changes nothing
        self.kept_writer = KeptWriter(self.protector) if self.emit_format == "otlp_proto" else None
        # ... and with the native core, written in Rust from the buffered bytes (no protobuf parse)
        self.native_kept = (
            NativeKeptWriter(self.kept_writer)
            if self.kept_writer is not None
            and NATIVE_KEPT_BUILT
            and isinstance(self.codec, NativeCodec)
            and self.codec.format == "otlp_proto"
            else None
        )
        # the native core (OTLP protobuf and Avro): no header dict per span at ingest, the SLI
        # windows count every span inside the decode call (Ingest._ingest_counted)
        self.counts_natively = isinstance(self.codec, NativeCodec) and self.codec.counts(self.sli)
        # Avro kept as Avro: likewise, each span encoded from its message's fields, protected per distinct value
        both_avro = self.ingest_format == self.emit_format == "avro"
        self.avro_kept_writer = AvroKeptWriter(self.protector) if both_avro else None
        # ... and with the native core, written in Rust from the buffered bytes (no fastavro decode)
        if (
            self.avro_kept_writer is not None
            and NATIVE_AVRO_KEPT_BUILT
            and isinstance(self.codec, NativeCodec)
            and self.codec.format == "avro"
        ):
            self.native_kept = NativeAvroKeptWriter(self.avro_kept_writer)

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
            self.decisions.remember(
                r["trace_id"], decision, partition, r["emitted_offsets"], r["decided_at_unix_nano"], r["trigger"]
            )
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
            metrics.GRAPH_SERVER_SECONDS.labels(edge.client, edge.server).inc(edge.latency_sum_ms / 1_000.0)
        for name, n in self.engine.policy_errors.items():
            metrics.POLICY_ERRORS.labels(name).set(n)
        for policy in self.engine.policies:
            if policy.guard_drops is not None:  # rate_limiting, bytes_limiting, composite
                metrics.POLICY_GUARD_DROPS.labels(policy.name).set(policy.guard_drops)
