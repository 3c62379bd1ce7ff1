"""Stage 3, decide: traces whose decision point has come are decoded again from their buffered raw
bytes (headers only), judged by the policies, and turn into a decision-log record plus — when kept
— kept records (``protect``); due SLI windows close beside them. ``collect`` gathers it all into
one ``Outbox``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

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
        started = time.perf_counter()
        out = self.decide_due(now_ns, behind)
        decided, decided_s = len(out.decision_points), time.perf_counter() - started
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
        # for the data plane's slow-commit log line: what the collect spent its time on
        self.collect_phases = (decided, decided_s, len(out.records), time.perf_counter() - started - decided_s)
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
        decide = self._decide
        try:
            for buf in self._redecoded(self.assembler.due(now_ns)):
                # event time: due() releases only idle partitions and memory-bound traces; their
                # decision time is the watermark the assembler recorded (0 in processing time)
                decide(buf, buf.decided_at_ns or now_ns, out, now_ns)
        finally:
            _TALLY.flush()
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
                    # let go of its headers and raw bytes: the assembler's clock queue and read-ahead
                    # heap keep a decided trace's buffer until its entry surfaces (up to a decision
                    # wait later: read ahead decides a backlog's traces before their clock deadline)
                    decided.spans = []
                    decided.messages = []
                chunk, spans = [], 0

    def _redecode(self, bufs: list[TraceBuffer]) -> None:
        """Only raw bytes were buffered: decode the headers of these traces again (decoded fine at
        ingest: same bytes, same result) into ``buf.spans``. A native codec reads them all in one
        call and gives no handle; the Python codec decodes each fully, and its handle rides along
        so a kept trace is not decoded a third time."""
        trace_facts = getattr(self.codec, "trace_facts", None)
        if trace_facts is not None:
            self._redecode_facts(bufs, trace_facts)
            return
        trace_headers = getattr(self.codec, "trace_headers", None)
        if trace_headers is not None:
            self._redecode_native(bufs, trace_headers)
            return
        units = [(unit, buf.trace_id) for buf in bufs for unit in buf.messages]
        decoded = iter(decode_traces_each(self.codec, [u.value for u, _ in units], [t for _, t in units]))
        for buf in bufs:
            spans: list = []
            for unit in buf.messages:
                headers, unit.handle = next(decoded)
                spans.extend(headers)
            buf.spans = spans

    def _redecode_facts(self, bufs: list[TraceBuffer], trace_facts: Callable[[list, list, list], tuple]) -> None:
        """``_redecode`` through a native codec's ``trace_facts``: ``buf.spans`` becomes the trace's
        native ``TraceFacts`` (``_decide`` views it with ``TraceView.from_facts``; the span dicts
        are built only if a policy asks), and the service graph counts the requests Rust paired
        for these traces now, per (client, server) pair in the order first found — the edges of
        ``add_trace`` over the same traces at their decisions. A trace Rust cannot read again
        (never expected) gets its header list from ``trace_headers`` and is paired at its
        decision."""
        values: list[bytes] = []
        trace_ids: list[bytes] = []
        counts: list[int] = []
        for buf in bufs:
            messages = buf.messages
            trace_ids.append(buf.trace_id)
            counts.append(len(messages))
            for unit in messages:
                unit.handle = None  # no handle from a native read: the kept path asks for one
                values.append(unit.value)
        facts, pairs = trace_facts(values, trace_ids, counts)
        if pairs:
            self.graph.add_pairs(pairs)
        for buf, f in zip(bufs, facts):
            if f is None:
                self._redecode_native([buf], self.codec.trace_headers)
            else:
                buf.spans = f  # the trace's facts stand for its header list until it is decided

    @staticmethod
    def _redecode_native(bufs: list[TraceBuffer], trace_headers: Callable[[list, list], list]) -> None:
        """``_redecode`` through a native codec's ``trace_headers`` (what ``decode_traces_each``
        does, without its per-message tuples): a trace of one message — every trace of keyed
        traffic — takes that message's header list as it comes."""
        values: list[bytes] = []
        trace_ids: list[bytes] = []
        for buf in bufs:
            trace_id = buf.trace_id
            for unit in buf.messages:
                values.append(unit.value)
                trace_ids.append(trace_id)
        results = trace_headers(values, trace_ids)
        i = 0
        for buf in bufs:
            messages = buf.messages
            if len(messages) == 1:
                messages[0].handle = None  # no handle from a native read: the kept path asks for one
                buf.spans = results[i]
                i += 1
                continue
            spans: list = []
            for unit in messages:
                unit.handle = None
                spans.extend(results[i])
                i += 1
            buf.spans = spans

    def _decide(self, buf: TraceBuffer, decided_ns: int, out: Outbox, now_ns: int) -> None:
        """Decide one released trace: decision record, kept trace (or released holds), metrics.
        ``decided_ns`` is the decision's time (the watermark in event time, else the worker clock)."""
        codec, trace_id = self.codec, buf.trace_id
        spans = buf.spans
        if not spans:  # not re-decoded with its collect's batch (sealed during ingest)
            self._redecode([buf])
            spans = buf.spans
        # attributes decoded only if a policy asks
        if type(spans) is list:
            self.graph.add_trace(spans)
            view = TraceView(
                trace_id, spans, now_ns=decided_ns, size_bytes=buf.size_bytes, decode_detail=codec.decode_detail
            )
        else:  # native facts (``_redecode_facts``): the graph counted its requests with its chunk
            view = TraceView.from_facts(
                trace_id, spans, now_ns=decided_ns, size_bytes=buf.size_bytes, decode_detail=codec.decode_detail
            )
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
        keep = decision.keep
        messages = buf.messages
        offsets = [unit.hold.offset for unit in messages] if keep else ()
        trigger = buf.trigger  # in the record and in tailsift_decision_points_total alike
        self.decisions.remember(trace_id, decision, buf.partition, offsets, decided_ns, trigger)
        out.records.append(self._decision_record(trace_id, decision, buf.partition, offsets, decided_ns, trigger))
        if self.event_time:
            out.decision_points.append(now_ns)
        else:
            out.decision_points.append(
                buf.deadline_ns
                if trigger == "decision_wait"
                else buf.last_seen_ns + self.assembler.root_quiet_gap_ns
                if trigger == "root_quiet"
                else now_ns
            )
        # counted here, added to the metrics once per decide_due (``_TALLY``)
        points = _TALLY.points
        points[trigger] = points.get(trigger, 0) + 1
        would_keep = keep if decision.dry_run_kept is None else decision.dry_run_kept
        key = ("keep" if would_keep else "drop", decision.policy or "-", buf.forced_reason or "-")
        decided = _TALLY.decided
        decided[key] = decided.get(key, 0) + 1
        if keep:
            if not self._kept_natively():  # the native kept writer reads the raw bytes, needs no handle
                for unit in messages:  # the kept path builds from the codec's handle (not re-decoded natively)
                    if unit.handle is None:
                        unit.handle = codec.decode_trace(unit.value, trace_id).handle
            out.kept_traces += 1
            _TALLY.kept_spans += buf.span_count
            out.records.extend(self._kept_records(trace_id, decision, messages, decided_ns, forced=buf.forced_reason))
        else:
            out.dropped_traces += 1
            release = self.tracker.release
            for unit in messages:
                release(unit.hold)


class _Tally:
    """Decision metrics counted per trace in plain dicts and added to the Prometheus counters once
    per ``decide_due`` (each ``inc`` takes the metric's lock and a label lookup: ~1–2 µs, twice per
    decided trace before). Traces decided outside ``decide_due`` (sealed during ingest) are added
    by the next one, the call that hands their records over."""

    __slots__ = ("points", "decided", "kept_spans")

    def __init__(self) -> None:
        self.points: dict[str, int] = {}
        self.decided: dict[tuple[str, str, str], int] = {}
        self.kept_spans = 0

    def flush(self) -> None:
        points, decided, kept_spans = self.points, self.decided, self.kept_spans
        self.points, self.decided, self.kept_spans = {}, {}, 0
        for trigger, n in points.items():
            _DECISION_POINTS(trigger).inc(n)
        for key, n in decided.items():
            _TRACES_DECIDED(*key).inc(n)
        if kept_spans:
            metrics.KEPT_SPANS.inc(kept_spans)


# one per process, as the metrics it feeds are
_TALLY = _Tally()
