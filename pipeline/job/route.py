"""Stage 2, route/assemble: a fragment of an undecided trace is buffered (raw bytes only) until
its decision point; one of a decided trace follows that decision at once — dropped: released;
kept: a late kept record, unless this very message is in traces.kept already (a replay)."""

from __future__ import annotations

from operators.assemble import Buffered
from operators.decision_cache import DROPPED
from pipeline import metrics
from pipeline.codecs.interface import Fragment

_BUFFERED = metrics.MESSAGES.labels("buffered")
_LATE_KEPT = metrics.MESSAGES.labels("late_kept")
_LATE_DROPPED = metrics.MESSAGES.labels("late_dropped")
_REPLAYED = metrics.MESSAGES.labels("replayed_already_emitted")
_LATE_SPANS_KEPT = metrics.LATE_SPANS.labels("kept")
_LATE_SPANS_DROPPED = metrics.LATE_SPANS.labels("dropped")
_LATE_SPANS_REPLAYED = metrics.LATE_SPANS.labels("replayed")


class Route:
    """The routing stage of ``Job`` (a mixin: the state is the job's)."""

    def _route(self, fragment: Fragment, partition: int, unit: Buffered, now_ns: int, stamp_ns: int = -1) -> None:
        trace_id = fragment.trace_id
        known = self.decisions.get(trace_id)
        if known is None:
            # buffer raw bytes only and decode the headers again at the decision (measured, beyond
            # the raw bytes: decoded Avro spans kept cost 1,177 B per buffered span, parsed OTLP
            # ~900 B; raw bytes and counts ~90 B; see Decide._decide and `make bench`)
            unit.handle = None
            sealed = self.assembler.add(trace_id, partition, fragment.spans(), unit, now_ns, len(unit.value), stamp_ns)
            _BUFFERED.inc()
            if sealed:
                self._decide_sealed(sealed, now_ns)
        else:
            self._follow(trace_id, known, fragment.span_count, unit, now_ns)

    def _route_counted(
        self,
        trace_id: bytes,
        span_count: int,
        has_root: bool,
        end_ns: int,
        partition: int,
        unit: Buffered,
        now_ns: int,
        stamp_ns: int,
    ) -> int:
        """``_route`` of a fragment the native core counted (``Ingest._ingest_counted``): the same
        with its span count, root and newest end instead of its headers. Returns 1 when it was
        buffered (the caller counts them per batch), else 0."""
        known = self.decisions.get(trace_id)
        if known is None:
            sealed = self.assembler.add_counted(
                trace_id, partition, span_count, has_root, end_ns, unit, now_ns, len(unit.value), stamp_ns
            )
            if sealed:
                self._decide_sealed(sealed, now_ns)
            return 1
        self._follow(trace_id, known, span_count, unit, now_ns)
        return 0

    def _decide_sealed(self, sealed: list, now_ns: int) -> None:
        """Event time: the watermark passed these traces; either time: a span/byte limit."""
        for buf in sealed:
            # decided now, not at the next collect: the trace's next fragments follow this decision
            self._decide(buf, buf.decided_at_ns if self.event_time else now_ns, self._sealed, now_ns)

    def _follow(self, trace_id: bytes, known, span_count: int, unit: Buffered, now_ns: int) -> None:
        """A fragment of a decided trace follows its decision: dropped — released; kept — a late
        kept record, unless this very message is in traces.kept already (a replay)."""
        if known is DROPPED:
            self.tracker.release(unit.hold)
            _LATE_DROPPED.inc()
            _LATE_SPANS_DROPPED.inc(span_count)
            return
        hold = unit.hold
        if hold.offset in known.offsets:
            self.tracker.release(hold)
            _REPLAYED.inc()
            _LATE_SPANS_REPLAYED.inc(span_count)
            return
        known.offsets.add(hold.offset)
        if unit.handle is None:  # a native fragment carries none: the kept path needs the codec's
            unit.handle = self.codec.decode_trace(unit.value, trace_id).handle
        self._pending.extend(self._kept_records(trace_id, known.decision, [unit], now_ns, late=True))
        self._pending.append(
            self._decision_record(
                trace_id, known.decision, known.partition, known.offsets, known.decided_at_ns, known.trigger
            )
        )
        _LATE_KEPT.inc()
        _LATE_SPANS_KEPT.inc(span_count)
