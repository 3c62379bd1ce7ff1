"""Group spans by trace ID until a decision point.

Two time modes (``assemble.time``):

**Processing time** (default; live traffic). Decision points are on the worker's clock:
``decision_wait`` after the trace's first span arrived; earlier, once the root span has arrived and
the trace has been quiet for ``root_quiet_gap`` (a finished request rarely grows after its root
ends — Refinery's SendDelay; 0 turns it off); a forced early decision when the trace exceeds
``max_spans_per_trace`` / ``max_trace_bytes`` or when the buffer as a whole exceeds
``max_buffered_spans`` / ``max_buffered_bytes`` (oldest trace first), so memory stays bounded.
``add`` buffers and returns the trace it forced by its span/byte limit (else ``[]``): it is
decided at once, so the trace's next fragments follow that one decision instead of opening a
second buffer with its own; ``due(now)`` releases what else is due.

*Backlog guard* (``max_wait_ns`` > ``decision_wait_ns``). The worker clock alone decides too early
when the worker reads a partition far behind real time (a drain after an outage): the trace's
later spans still sit unread in the partition. So a trace whose clock wait is over is also *held*
until its partition is caught up or read far enough in Kafka message time
(``operators.read_progress``): to its first message's stamp + ``decision_wait`` (trigger
``backlog_read`` when it was held), and for ``root_quiet`` to its newest message's stamp + the gap
(else no early decision: the guarded ``decision_wait`` decides it). Bounded: a trace is held at
most until ``max_wait_ns`` after its first span arrived (then forced, reason ``backlog_limit``),
and at the buffer bound (``backlog_yield_*``, where backpressure pauses the input, so waiting for
more input would stall) held traces go oldest first, down to ``resume_fraction`` of it (trigger
``backlog_bound``) — at every ``due`` from the bound until under that mark, as long as the caller's
input stays paused. A partition never reported behind (``set_behind``) holds nothing: decisions
are then exactly those of the worker clock alone. *Read ahead*: a trace first seen on a partition
behind goes as soon as the partition is read to its first stamp + ``decision_wait`` (trigger
``backlog_read``), before its clock wait if the read gets there first — a drain then decides in
reading order instead of a wait's reading in one late burst (``_release_read_ahead``).

The guard also waits for the *group's* read time (``set_group_read_times``): spans re-keyed to
this partition from another one arrive when that partition's reader commits them, so a trace is
held until every other input partition is read (and its copies written and read here) past the
same stamp — with the same bounds. A trace held only for that keeps its trigger (``decision_wait``
or ``root_quiet``; the wait shows in the decision latency); one whose own partition was behind is
``backlog_read``.

**Event time** (``event_time=True``; replays decide the same way every run). Time is read from
the spans: a message's event time is the newest ``end_time_unix_nano`` among its spans. A trace's
deadline is its first message's event time + ``decision_wait``; once its root arrived (and
``root_quiet_gap`` > 0) also its newest span end + ``root_quiet_gap``, whichever is earlier. Each
partition has a watermark (``operators.watermark``): the newest event time seen on it minus
``allowed_lateness``. ``add`` appends the message, advances its partition's watermark, and
*returns* every trace of that partition whose deadline is at or below the watermark, in
(deadline, trace ID) order, plus a trace forced by its span/byte limit — so what is sealed, and
with which spans, depends only on each partition's record order, not on when ``due`` runs.
``buf.decided_at_ns`` is the watermark at sealing. ``due(now)`` releases only what the worker
clock has to decide: every trace of a partition that received nothing for ``idle_partition``
(trigger ``idle_partition``; its watermark would never move again), and the oldest-deadline traces
when over the global bounds (``memory_bound``) — both depend on timing, like processing time.

Spans that arrive after their trace was decided follow the remembered decision
(``operators.decision_cache``) — the caller checks that first; the assembler never sees them.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from operators.read_progress import REACHED, UNKNOWN, ReadProgress
from operators.trace import SpanHeader
from operators.watermark import PartitionWatermarks


@dataclass(slots=True)
class Buffered:
    """One message's share of a buffered trace, as the job buffers it: the input ``Hold`` it
    discharges, the message's raw bytes, and the codec's handle (None when only raw bytes are
    kept: the decision decodes them again)."""

    hold: Any
    value: bytes
    handle: Any = None


@dataclass(slots=True)
class TraceBuffer:
    trace_id: bytes
    partition: int
    first_seen_ns: int
    deadline_ns: int
    spans: list[SpanHeader] = field(default_factory=list)  # empty when the assembler does not keep spans
    span_count: int = 0
    messages: list[Any] = field(default_factory=list)  # per message: the caller's unit (the job's: Buffered)
    forced_reason: str = ""
    has_root: bool = False
    last_seen_ns: int = 0
    trigger: str = "decision_wait"  # which decision point released it
    size_bytes: int = 0  # raw bytes of its messages
    decided_at_ns: int = 0  # event time: the partition watermark when it was sealed (processing time: 0)
    # processing time, backlog guard: Kafka-time stamps (ns) of its first and newest message (-1: none)
    first_stamp_ns: int = UNKNOWN
    last_stamp_ns: int = UNKNOWN
    held: bool = False  # clock wait over, waiting for its partition to be read far enough
    hold_trigger: str = "backlog_read"  # the trigger it leaves with once read far enough


@dataclass(slots=True)
class _Held:
    """One partition's held traces: in arrival order (for the hard bound) and in a heap by the
    partition time each waits for. Entries of traces that left otherwise go stale (``held`` is
    False, or the buffer is no longer the trace's) and are skipped when they surface."""

    order: deque[TraceBuffer] = field(default_factory=deque)
    heap: list[tuple[int, int, TraceBuffer]] = field(default_factory=list)  # (stamp to reach, seq, buffer)
    count: int = 0


class TraceAssembler:
    """Owns the spans (or raw messages) of every undecided trace and decides *when* each is due —
    never *what* is decided: it knows no policy and no decision. It never reads a clock (time is
    passed in) and never holds more than its bounds: a trace or the whole buffer at a limit is
    released early, with the reason on the buffer."""

    def __init__(
        self,
        decision_wait_ns: int,
        max_buffered_spans: int = 1_000_000,
        max_spans_per_trace: int = 10_000,
        root_quiet_gap_ns: int = 0,
        max_trace_bytes: int = 1 << 62,
        max_buffered_bytes: int = 1 << 62,
        event_time: bool = False,
        allowed_lateness_ns: int = 0,
        idle_partition_ns: int = 10**10,
        keep_spans: bool = True,
        resume_fraction: float = 1.0,
        max_wait_ns: int = 0,
        max_clock_skew_ns: int = 300 * 10**9,
        backlog_yield_spans: int = 1 << 62,
        backlog_yield_bytes: int = 1 << 62,
    ):
        self.decision_wait_ns = decision_wait_ns
        self.root_quiet_gap_ns = root_quiet_gap_ns
        self.max_buffered_spans = max_buffered_spans
        self.max_spans_per_trace = max_spans_per_trace
        # False: buffers hold only the caller's units (raw bytes) and counts; the caller decodes
        # the spans again at the decision (a decoded span costs ~1 KB, its raw bytes ~0.5 KB)
        self.keep_spans = keep_spans
        self.max_trace_bytes = max_trace_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered_bytes = 0
        # Insertion order = first-seen order = deadline order (the wait is the same for all).
        self._traces: OrderedDict[bytes, TraceBuffer] = OrderedDict()
        # Traces whose root arrived, in order of last activity (= order of their quiet deadlines).
        self._rooted: OrderedDict[bytes, TraceBuffer] = OrderedDict()
        self.buffered_spans = 0
        self.event_time = event_time
        self.allowed_lateness_ns = allowed_lateness_ns
        self.idle_partition_ns = idle_partition_ns
        # event time with backpressure (< 1): the caller pauses input at a bound, which freezes the
        # watermarks, so nothing would be decided until idle_partition; instead due() seals the
        # oldest deadlines down to this fraction of the bounds (the caller's resume mark)
        self.resume_fraction = resume_fraction
        # processing time, backlog guard (off unless the hard bound leaves room beyond the clock wait)
        self.max_wait_ns = max_wait_ns
        self.guarded = not event_time and max_wait_ns > decision_wait_ns
        self.progress = ReadProgress(max_clock_skew_ns)
        self.backlog_yield_spans = backlog_yield_spans
        self.backlog_yield_bytes = backlog_yield_bytes
        self._waiting: deque[TraceBuffer] = deque()  # clock wait not over yet, arrival order (stale entries skipped)
        self._held: dict[int, _Held] = {}
        self._held_seq = itertools.count()
        # traces first seen on a partition behind, per partition a heap by the partition time their
        # wait ends at (first stamp + decision_wait): released once it is read that far, even
        # before their clock wait is over (``_release_read_ahead``). Entries of traces that left
        # otherwise go stale and are skipped when they surface.
        self._ahead: dict[int, list[tuple[int, int, TraceBuffer]]] = {}
        # reached the yield bound and not yet under its resume mark: the caller's input stays paused
        # all that time (the same hysteresis), so held traces go at every due() until then, not
        # only while the buffer is at the bound itself
        self._at_bound = False
        if not self.guarded:
            self.read = _no_stamp  # type: ignore[method-assign]
        if event_time:
            # event time: per partition a heap of deadlines (see _add_event)
            self.watermarks = PartitionWatermarks(allowed_lateness_ns)
            self._by_deadline: dict[int, list[tuple[int, bytes, int, TraceBuffer]]] = {}
            self._seq = itertools.count()
            # plain instance attributes: the processing-time methods stay as they were (no branch)
            self.add_counted = self._add_counted_event  # type: ignore[method-assign]
            self.due = self._due_event  # type: ignore[method-assign]

    def __len__(self) -> int:
        return len(self._traces)

    def read(self, partition: int, timestamp_ms: int, now_ns: int) -> int:
        """Account one message read from ``partition`` (its Kafka timestamp, ms; < 0: none), whatever
        becomes of it; returns its stamp for ``add`` (``operators.read_progress``; -1 when the
        backlog guard is off)."""
        return self.progress.read(partition, timestamp_ms, now_ns)

    def set_behind(self, partitions: Iterable[int]) -> None:
        """The partitions the data plane found not read to the end at its last look."""
        self.progress.set_behind(partitions)

    def set_group_read_times(self, read_times: dict[int, int]) -> None:
        """Per owned partition, how far (ns, Kafka time) the whole input is read, its re-keyed
        copies written and read there (``operators.read_progress``)."""
        self.progress.set_group(read_times)

    def add(
        self,
        trace_id: bytes,
        partition: int,
        spans: list[SpanHeader],
        unit: Any,
        now_ns: int,
        size_bytes: int = 0,
        stamp_ns: int = UNKNOWN,
    ) -> list[TraceBuffer]:
        """Buffer one message's spans (``stamp_ns``: what ``read`` returned for it). Callers check
        the decision cache first for late spans. Returns the traces this message sealed: in
        processing time only a trace that reached its span/byte limit with this message (the others
        come out of ``due``). ``add_counted`` with what it reads of the spans."""
        has_root = bool(self.root_quiet_gap_ns) and any(s.get("parent_span_id") is None for s in spans)
        end_ns = max([s["end_time_unix_nano"] for s in spans]) if self.event_time and spans else 0
        return self.add_counted(
            trace_id,
            partition,
            len(spans),
            has_root,
            end_ns,
            unit,
            now_ns,
            size_bytes,
            stamp_ns,
            spans if self.keep_spans else None,
        )

    def add_counted(
        self,
        trace_id: bytes,
        partition: int,
        span_count: int,
        has_root: bool,
        end_ns: int,
        unit: Any,
        now_ns: int,
        size_bytes: int = 0,
        stamp_ns: int = UNKNOWN,
        spans: list[SpanHeader] | None = None,
    ) -> list[TraceBuffer]:
        """``add`` of one message's fragment as counts: ``span_count`` spans, ``has_root`` when one
        of them is a root, ``end_ns`` their newest end (read in event time only) — all the buffer
        needs of the spans when it does not keep them (``keep_spans`` False: ``spans`` None), so a
        caller that decoded them natively builds no span objects (``pipeline.job.ingest``)."""
        buf = self._traces.get(trace_id)
        if buf is None:
            buf = TraceBuffer(trace_id, partition, now_ns, now_ns + self.decision_wait_ns, first_stamp_ns=stamp_ns)
            self._traces[trace_id] = buf
            self._waiting.append(buf)
            if stamp_ns >= 0 and self.progress.is_behind(partition):
                ahead = self._ahead.get(partition)
                if ahead is None:
                    ahead = self._ahead[partition] = []
                heapq.heappush(ahead, (stamp_ns + self.decision_wait_ns, next(self._held_seq), buf))
        buf.span_count += span_count
        if spans is not None:
            buf.spans.extend(spans)
        buf.messages.append(unit)
        buf.last_seen_ns = now_ns
        buf.size_bytes += size_bytes
        self.buffered_spans += span_count
        self.buffered_bytes += size_bytes
        if self.root_quiet_gap_ns:
            if stamp_ns > buf.last_stamp_ns:
                buf.last_stamp_ns = stamp_ns
            if has_root:
                buf.has_root = True
            if buf.has_root:
                self._rooted[trace_id] = buf
                self._rooted.move_to_end(trace_id)
        if buf.span_count >= self.max_spans_per_trace:
            return [self._force(buf, "span_limit")]
        if buf.size_bytes >= self.max_trace_bytes:
            return [self._force(buf, "trace_bytes")]
        return []

    def _force(self, buf: TraceBuffer, reason: str) -> TraceBuffer:
        out: list[TraceBuffer] = []
        self._take(buf, reason, out)
        buf.forced_reason = reason
        return buf

    def _take(self, buf: TraceBuffer, trigger: str, out: list[TraceBuffer]) -> None:
        """``buf`` leaves the buffer (its entries in the waiting queue and held index go stale)."""
        del self._traces[buf.trace_id]
        self._rooted.pop(buf.trace_id, None)
        if buf.held:
            buf.held = False
            self._held[buf.partition].count -= 1
        self.buffered_spans -= buf.span_count
        self.buffered_bytes -= buf.size_bytes
        buf.trigger = trigger
        out.append(buf)

    def due(self, now_ns: int) -> list[TraceBuffer]:
        """Traces whose decision point has come, oldest first per kind of decision point; they leave
        the buffer."""
        out: list[TraceBuffer] = []
        traces, rooted, take = self._traces, self._rooted, self._take
        mark, own_mark, guarded = self.progress.mark, self.progress.own_mark, self.guarded
        gap = self.root_quiet_gap_ns
        wait = self.decision_wait_ns
        quiet_before = now_ns - gap
        while rooted:
            buf = next(iter(rooted.values()))
            if buf.last_seen_ns > quiet_before:
                break
            rooted.popitem(last=False)
            stamp = buf.last_stamp_ns
            if guarded and stamp >= 0:
                if buf.held:
                    continue  # held at an earlier quiet point already: released from there
                target = stamp + gap
                if mark(buf.partition) < target:
                    if own_mark(buf.partition) < target:
                        continue  # its partition is behind: no early decision, the decision_wait (guarded) decides it
                    # read to the end here, but another partition may still hold re-keyed copies
                    first = buf.first_stamp_ns
                    self._hold(buf, min(target, first + wait) if first >= 0 else target, "root_quiet")
                    continue
            take(buf, "root_quiet", out)
        waiting = self._waiting
        while waiting:
            buf = waiting[0]
            if traces.get(buf.trace_id) is not buf:  # left already (forced, root_quiet, revoked)
                waiting.popleft()
                continue
            if buf.deadline_ns > now_ns:
                break
            waiting.popleft()
            if buf.held:
                continue  # held at its root's quiet point already (no later than this)
            stamp = buf.first_stamp_ns
            if not guarded or stamp < 0:
                take(buf, "decision_wait", out)
                continue
            target = stamp + wait
            if mark(buf.partition) >= target:
                take(buf, "decision_wait", out)
            else:
                self._hold(buf, target, "backlog_read" if own_mark(buf.partition) < target else "decision_wait")
        if self._ahead:
            self._release_read_ahead(now_ns, out)
        if self._held:
            self._release_held(now_ns, out)
        if (
            self._at_bound
            or self.buffered_spans >= self.backlog_yield_spans
            or self.buffered_bytes >= self.backlog_yield_bytes
        ):
            self._at_bound = self._yield_held(out)
        while traces and (
            self.buffered_spans > self.max_buffered_spans or self.buffered_bytes > self.max_buffered_bytes
        ):
            buf = next(iter(traces.values()))
            take(buf, "memory_bound", out)
            buf.forced_reason = "memory_bound"
        return out

    # ---------------------------------------------------------------- processing time, backlog guard
    def _hold(self, buf: TraceBuffer, until_stamp_ns: int, trigger: str) -> None:
        h = self._held.get(buf.partition)
        if h is None:
            h = self._held[buf.partition] = _Held()
        buf.held = True
        buf.hold_trigger = trigger
        h.count += 1
        h.order.append(buf)
        heapq.heappush(h.heap, (until_stamp_ns, next(self._held_seq), buf))
        if len(h.heap) > 2 * h.count + 1024:  # stale entries of traces that left otherwise
            h.heap = [e for e in h.heap if e[2].held and self._traces.get(e[2].trace_id) is e[2]]
            heapq.heapify(h.heap)

    def _release_held(self, now_ns: int, out: list[TraceBuffer]) -> None:
        """Held traces whose partition (and the group) is caught up or read far enough (trigger
        ``backlog_read``, or the one they were held at when only the group held them), then those
        held up to the hard bound (forced, ``backlog_limit``)."""
        traces, take, progress = self._traces, self._take, self.progress
        limit_before = now_ns - self.max_wait_ns
        for p, h in self._held.items():
            if not h.count:
                h.order.clear()
                h.heap.clear()
                continue
            read_to = progress.mark(p)
            if read_to >= REACHED:
                for buf in h.order:
                    if buf.held and traces.get(buf.trace_id) is buf:
                        take(buf, buf.hold_trigger, out)
                h.order.clear()
                h.heap.clear()
                continue
            heap = h.heap
            while heap and heap[0][0] <= read_to:
                buf = heapq.heappop(heap)[2]
                if buf.held and traces.get(buf.trace_id) is buf:
                    take(buf, buf.hold_trigger, out)
            order = h.order
            while order:
                buf = order[0]
                if not (buf.held and traces.get(buf.trace_id) is buf):
                    order.popleft()
                    continue
                if buf.first_seen_ns > limit_before:
                    break
                order.popleft()
                take(buf, "backlog_limit", out)
                buf.forced_reason = "backlog_limit"

    def _release_read_ahead(self, now_ns: int, out: list[TraceBuffer]) -> None:
        """Traces whose partition, still behind, is read (and the group with it) past their first
        stamp + ``decision_wait``, their clock wait over or not (trigger ``backlog_read``): all a
        worker reading live would have had by its clock deadline is read. Draining a backlog
        faster than it was written, partition time runs ahead of the clock; deciding by the clock
        alone let a whole wait's reading fall due at once — decided in a burst, late, while nothing
        was read; then the next burst (seen on make bench: a 1.3 s collect of 4,466 traces, decision
        latency p99 2.4 s at a 0.5 s commit interval). A partition caught up drops its entries: the
        clock decides there. Only a partition read at least a decision wait behind the worker clock
        reads ahead: a majority of far-future timestamps (a producer clock minutes fast, a hostile
        CreateTime) moves its time up to the clock + ``max_clock_skew``, and must not release its
        traces before their clock wait — then they wait for it, as before."""
        backlog_before = now_ns - self.decision_wait_ns
        traces, take, mark = self._traces, self._take, self.progress.mark
        for p in list(self._ahead):
            heap = self._ahead[p]
            read_to = mark(p)
            if read_to >= REACHED:
                del self._ahead[p]
                continue
            if read_to > backlog_before:
                continue
            while heap and heap[0][0] <= read_to:
                buf = heapq.heappop(heap)[2]
                if traces.get(buf.trace_id) is buf:
                    take(buf, "backlog_read", out)
            if len(heap) > 2 * len(traces) + 1024:  # stale entries of traces that left otherwise
                heap[:] = [e for e in heap if traces.get(e[2].trace_id) is e[2]]
                heapq.heapify(heap)
            if not heap:
                del self._ahead[p]

    def _yield_held(self, out: list[TraceBuffer]) -> bool:
        """From the buffer bound until under its resume mark (the input is paused all that time):
        held traces (the oldest buffered, their clock wait is over) go, oldest first, down to
        ``resume_fraction`` of the bound. Returns whether the buffer is still at or over that mark.

        A yield that stops at a trace still in its clock wait leaves the buffer between the mark
        and the bound; the traces behind it are held once their wait is over and go at a later
        call. Yielding only while at the bound itself left them held to the hard bound
        (``backlog_limit``) with the input paused: the overload stall of issue 13."""
        traces = self._traces
        low_spans = self.resume_fraction * self.backlog_yield_spans
        low_bytes = self.resume_fraction * self.backlog_yield_bytes
        while self.buffered_spans >= low_spans or self.buffered_bytes >= low_bytes:
            if not traces:
                return False
            buf = next(iter(traces.values()))
            if not buf.held:  # the oldest is still in its clock wait: so is every younger one
                return True
            self._take(buf, "backlog_bound", out)
        return False

    # ---------------------------------------------------------------- event time
    # Each partition has a heap of (deadline, trace ID, seq, buffer). A deadline that moves (root
    # arrival, a later span end) pushes a new entry; the old one goes stale and is skipped when it
    # surfaces (an entry is live iff its trace is still buffered as that buffer with that deadline).
    # (deadline, trace ID) decides the order; seq only separates entries of the same trace.
    def _add_counted_event(
        self,
        trace_id: bytes,
        partition: int,
        span_count: int,
        has_root: bool,
        end_ns: int,
        unit: Any,
        now_ns: int,
        size_bytes: int = 0,
        stamp_ns: int = UNKNOWN,
        spans: list[SpanHeader] | None = None,
    ) -> list[TraceBuffer]:
        """Event time: buffer one message, advance its partition's watermark, return what it sealed."""
        marks = self.watermarks
        if span_count:
            event_ns = end_ns
        else:  # nothing to read a time from: it does not move time
            event_ns = marks.max_event(partition) or 0
        # (a) append to the trace, (re)key its deadline
        traces = self._traces
        buf = traces.get(trace_id)
        if buf is None:
            buf = traces[trace_id] = TraceBuffer(
                trace_id, partition, event_ns, event_ns + self.decision_wait_ns, last_seen_ns=event_ns
            )
            old = None
        else:
            old = buf.deadline_ns
            if event_ns > buf.last_seen_ns:
                buf.last_seen_ns = event_ns  # newest span end of the trace
        buf.span_count += span_count
        if spans is not None:
            buf.spans.extend(spans)
        buf.messages.append(unit)
        buf.size_bytes += size_bytes
        self.buffered_spans += span_count
        self.buffered_bytes += size_bytes
        deadline = buf.first_seen_ns + self.decision_wait_ns
        if self.root_quiet_gap_ns:
            if has_root:
                buf.has_root = True
            if buf.has_root:
                quiet = buf.last_seen_ns + self.root_quiet_gap_ns
                if quiet <= deadline:  # the earlier decision point; ties: root_quiet
                    deadline = quiet
                    buf.trigger = "root_quiet"
                else:
                    buf.trigger = "decision_wait"
        heaps = self._by_deadline
        heap = heaps.get(buf.partition)
        if heap is None:
            heap = heaps[buf.partition] = []
        if old is None:
            buf.deadline_ns = deadline
            heapq.heappush(heap, (deadline, trace_id, next(self._seq), buf))
        elif deadline != old:
            buf.deadline_ns = deadline
            heapq.heappush(heap, (deadline, trace_id, next(self._seq), buf))
            if len(heap) > 2 * len(traces) + 1024:
                self._compact(buf.partition)
        # (b) advance the partition's watermark
        mark = marks.observe(partition, event_ns)
        marks.touch(partition, now_ns)
        out: list[TraceBuffer] = []
        if buf.span_count >= self.max_spans_per_trace:
            self._force_event(buf, "span_limit", out)
        elif buf.size_bytes >= self.max_trace_bytes:
            self._force_event(buf, "trace_bytes", out)
        # (c) seal every trace of this partition whose deadline the watermark passed
        heap = heaps.get(partition)
        if heap is None:
            heap = heaps[partition] = []
        while heap and heap[0][0] <= mark:
            d, tid, _, b = heapq.heappop(heap)
            if b.deadline_ns == d and traces.get(tid) is b:
                self._seal(b, mark, out)
        return out

    def _force_event(self, buf: TraceBuffer, reason: str, out: list[TraceBuffer]) -> None:
        # out at once, ahead of what the watermark seals; its heap entry goes stale
        self._seal(buf, self.watermarks.get(buf.partition), out)
        buf.forced_reason = buf.trigger = reason

    def _seal(self, buf: TraceBuffer, mark: int | None, out: list[TraceBuffer]) -> None:
        del self._traces[buf.trace_id]
        self.buffered_spans -= buf.span_count
        self.buffered_bytes -= buf.size_bytes
        buf.decided_at_ns = buf.last_seen_ns if mark is None else mark
        out.append(buf)

    def _live(self, partition: int) -> list[tuple]:
        """The partition's live heap entries, one per buffered trace, in (deadline, trace ID) order."""
        traces, seen, live = self._traces, set(), []
        for e in sorted(self._by_deadline.get(partition, ())):
            b = e[3]
            if b.deadline_ns == e[0] and traces.get(e[1]) is b and e[1] not in seen:
                seen.add(e[1])
                live.append(e)
        return live

    def _compact(self, partition: int) -> None:
        self._by_deadline[partition] = self._live(partition)  # sorted = a valid heap

    def _due_event(self, now_ns: int) -> list[TraceBuffer]:
        """Event time: traces the worker clock decides — all traces of partitions idle for
        ``idle_partition_ns`` (trigger idle_partition), then the oldest deadlines while over a
        global bound (memory_bound; with ``resume_fraction`` < 1 from the bound down to that
        fraction of it). Watermark-passed traces come out of ``add`` instead."""
        out: list[TraceBuffer] = []
        heaps = self._by_deadline
        for p in self.watermarks.idle(now_ns, self.idle_partition_ns):
            if not heaps.get(p):
                continue
            mark = self.watermarks.get(p)
            for e in self._live(p):
                buf = e[3]
                buf.trigger = "idle_partition"
                self._seal(buf, mark, out)
            heaps[p] = []
        max_spans, max_bytes, fraction = self.max_buffered_spans, self.max_buffered_bytes, self.resume_fraction
        if fraction < 1.0:  # backpressure: input pauses at the bound; seal until it resumes
            over_bound = self.buffered_spans >= max_spans or self.buffered_bytes >= max_bytes
            low_spans, low_bytes = fraction * max_spans, fraction * max_bytes

            def over() -> bool:
                return self.buffered_spans >= low_spans or self.buffered_bytes >= low_bytes
        else:  # force_decision: never more than the bounds after due()
            over_bound = self.buffered_spans > max_spans or self.buffered_bytes > max_bytes

            def over() -> bool:
                return self.buffered_spans > max_spans or self.buffered_bytes > max_bytes

        if over_bound:
            traces = self._traces
            heads = [(h[0], p) for p, h in heaps.items() if h]
            heapq.heapify(heads)
            while heads and over():
                (d, tid, _, buf), p = heapq.heappop(heads)
                heap = heaps[p]
                heapq.heappop(heap)
                if heap:
                    heapq.heappush(heads, (heap[0], p))
                if buf.deadline_ns == d and traces.get(tid) is buf:
                    buf.forced_reason = buf.trigger = "memory_bound"
                    self._seal(buf, self.watermarks.get(p), out)
        return out

    def over_bound(self) -> bool:
        """At the global bound (backpressure mode: the caller pauses input instead of forcing)."""
        return self.buffered_spans >= self.max_buffered_spans or self.buffered_bytes >= self.max_buffered_bytes

    def revoke(self, partitions: Iterable[int]) -> int:
        """Drop buffered traces of partitions this worker lost (their offsets are uncommitted, so
        the new owner reads them again). Returns how many traces were dropped."""
        lost = set(partitions)
        gone = [tid for tid, b in self._traces.items() if b.partition in lost]
        for tid in gone:
            buf = self._traces.pop(tid)
            buf.held = False
            self.buffered_spans -= buf.span_count
            self.buffered_bytes -= buf.size_bytes
            self._rooted.pop(tid, None)
        dropped = len(gone)
        for p in lost:
            self._held.pop(p, None)
            self._ahead.pop(p, None)
        self.progress.forget(lost)
        if self.event_time:
            for p in lost:
                self._by_deadline.pop(p, None)
            self.watermarks.forget(lost)
        return dropped

    def __iter__(self) -> Iterator[TraceBuffer]:
        return iter(list(self._traces.values()))


def _no_stamp(partition: int, timestamp_ms: int, now_ns: int) -> int:
    """``read`` with the backlog guard off (event time, or no room beyond the clock wait)."""
    return UNKNOWN
