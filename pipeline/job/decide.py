"""Stage 3, decide: traces whose decision point has come are decoded again from their buffered raw
bytes (headers only), judged by the policies, and turn into a decision-log record plus — when kept
— kept records (``protect``); due SLI windows close beside them. ``collect`` gathers it all into
one ``Outbox``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from operators.assemble import TraceBuffer
from operators.decide import Decision
from operators.trace import TraceView
from pipeline import metrics
from pipeline.codecs import decode_traces_each
from pipeline.job.labels import Children
from pipeline.job.records import Outbox, Record

# kept because a kept trace links to it (sampling.follow_links): probability 0 → adjusted count 0,
# so estimates summed over kept traces are unchanged by traces kept only as context
FOLLOWED_LINK = Decision(True, "follow_links", "linked_from_kept_trace", probability=0.0)
_SLI_SPANS = Children(metrics.SLI_SPANS)
_SLI_LATENCY_SUM = Children(metrics.SLI_LATENCY_SUM)
_SLO_EVENTS = Children(metrics.SLO_EVENTS)
_SLO_BAD_EVENTS = Children(metrics.SLO_BAD_EVENTS)
_DECISION_POINTS = Children(metrics.DECISION_POINTS)
_TRACES_DECIDED = Children(metrics.TRACES_DECIDED)
# the decision's re-decode takes this many spans per call (headers of more due traces than this are
# not held at once: memory stays bounded when a backlog falls due together)
_REDECODE_SPANS = 16_384


class Decide:
    """The decision stage of ``Job`` (a mixin: the state is the job's)."""

    def collect(self, now_ns: int, flush_all_windows: bool = False, behind: Iterable[int] | None = None) -> Outbox:
        """Decide every trace whose decision point has come and close due SLI windows. ``behind``:
        the input partitions the data plane found not read to the end (processing time: their
        traces also wait to be read far enough, ``operators.assemble``); None: as last time."""
        out = self.decide_due(now_ns, behind)
        # exactly_once: every open window goes out as a partial with this transaction, so the
        # checkpoint below can say "counted and written" for every offset ingested so far
        for window in self.sli.due(now_ns, flush_all=flush_all_windows or self.exactly_once):
            out.records.append(
                Record(self.sli_topic, window.service.encode(), self._sli_record(window, now_ns), window.holds)
            )
            _SLI_SPANS(window.service, window.span_kind, window.status).inc(window.span_count)
            _SLI_LATENCY_SUM(window.service, window.span_kind, window.status).inc(window.sum_ms / 1_000.0)
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
                    _SLO_EVENTS(name).inc(events)
                    _SLO_BAD_EVENTS(name).inc(bad)
        if self.exactly_once:
            out.checkpoints = self._processed
            self._processed = {}
        return out

    def decide_due(self, now_ns: int, behind: Iterable[int] | None = None) -> Outbox:
        """The part of ``collect`` the data plane runs at every step: decide every trace whose
        decision point has come and hand over the records pending so far (dead letters, late
        spans, re-keyed copies), so they can leave at once in the open transaction. No SLI window
        closes and no checkpoint is taken: ``collect`` does both, once per commit interval, and
        covers what was handed over here only because it goes out in the same transaction.
        ``behind``: as in ``collect``."""
        if behind is not None:
            self.assembler.set_behind(behind)
        out = self._sealed  # its records are _pending
        self._pending = []
        self._sealed = Outbox(self._pending)
        for buf in self._redecoded(self.assembler.due(now_ns)):
            # event time: due() releases only idle partitions and memory-bound traces; their
            # decision time is the watermark the assembler recorded (0 in processing time)
            self._decide(buf, buf.decided_at_ns or now_ns, out, now_ns)
        out.records.extend(self._pending)  # dead letters for corrupt details found while building kept traces
        self._pending.clear()  # (the list stays shared with self._sealed)
        return out

    def _redecoded(self, due: list[TraceBuffer]) -> Iterator[TraceBuffer]:
        """``due`` with their headers decoded again (``_redecode``), ``_REDECODE_SPANS`` at a time:
        one call into a native codec for every message of those traces; a trace's headers are let
        go once it is decided (``due`` holds every buffer until the collect ends)."""
        chunk: list[TraceBuffer] = []
        spans = 0
        for i, buf in enumerate(due):
            chunk.append(buf)
            spans += buf.span_count
            if spans >= _REDECODE_SPANS or i == len(due) - 1:
                self._redecode(chunk)
                for decided in chunk:
                    yield decided
                    decided.spans = []
                chunk, spans = [], 0

    def _redecode(self, bufs: list[TraceBuffer]) -> None:
        """Only raw bytes were buffered: decode the headers of these traces again (decoded fine at
        ingest: same bytes, same result) into ``buf.spans``. A native codec reads them all in one
        call and gives no handle; the Python codec decodes each fully, and its handle rides along
        so a kept trace is not decoded a third time."""
        units = [(unit, buf.trace_id) for buf in bufs for unit in buf.messages]
        decoded = iter(decode_traces_each(self.codec, [u.value for u, _ in units], [t for _, t in units]))
        for buf in bufs:
            spans: list = []
            for unit in buf.messages:
                headers, unit.handle = next(decoded)
                spans.extend(headers)
            buf.spans = spans

    def _decide(self, buf: TraceBuffer, decided_ns: int, out: Outbox, now_ns: int) -> None:
        """Decide one released trace: decision record, kept trace (or released holds), metrics.
        ``decided_ns`` is the decision's time (the watermark in event time, else the worker clock)."""
        codec, trace_id = self.codec, buf.trace_id
        if not buf.spans:  # not re-decoded with its collect's batch (sealed during ingest)
            self._redecode([buf])
        spans = buf.spans
        self.graph.add_trace(spans)
        view = TraceView(
            trace_id, spans, now_ns=decided_ns, size_bytes=buf.size_bytes, decode_detail=codec.decode_detail
        )  # attributes decoded only if a policy asks
        decision = self.engine.decide(view)
        if self._link_hints and trace_id in self._link_hints:
            del self._link_hints[trace_id]
            if decision.vetoed:  # a drop rule (health checks, a tenant never stored) wins over links
                metrics.FOLLOW_LINKS.labels("dropped_by_policy").inc()
            elif not decision.keep:  # context for a kept trace that links here; stands for no traces
                decision = FOLLOWED_LINK
                metrics.FOLLOW_LINKS.labels("kept").inc()
        if self.dry_run:
            decision = decision.dry_run()  # kept, annotated with what would have happened
        offsets = [unit.hold.offset for unit in buf.messages] if decision.keep else ()
        self.decisions.remember(trace_id, decision, buf.partition, offsets, decided_ns)
        out.records.append(self._decision_record(trace_id, decision, buf.partition, offsets, decided_ns))
        _DECISION_POINTS(buf.trigger).inc()
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
        _TRACES_DECIDED(
            "keep" if decision.would_keep else "drop", decision.policy or "-", buf.forced_reason or "-"
        ).inc()
        if decision.keep:
            for unit in buf.messages:  # the kept path builds from the codec's handle (not re-decoded natively)
                if unit.handle is None:
                    unit.handle = codec.decode_trace(unit.value, trace_id).handle
            out.kept_traces += 1
            metrics.KEPT_SPANS.inc(buf.span_count)
            out.records.extend(
                self._kept_records(trace_id, decision, buf.messages, decided_ns, forced=buf.forced_reason)
            )
        else:
            out.dropped_traces += 1
            for unit in buf.messages:
                self.tracker.release(unit.hold)
