"""Stage 5, emit: the records the job writes beside kept traces — decision-log entries, SLI window
partials, dead letters and PII audits — each holding the input offsets it discharges."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from operators.commit import Hold
from operators.decide import Decision
from operators.sli import WindowAggregate, window_record
from pipeline import metrics
from pipeline.codecs import avro
from pipeline.codecs.avro_audit import AuditEncoder
from pipeline.codecs.avro_decision import DecisionEncoder
from pipeline.job.labels import Children
from pipeline.job.records import Received, Record

_DEADLETTERS = Children(metrics.DEADLETTERS)
_PII_DETECTIONS = Children(metrics.PII_DETECTIONS)  # .labels() per kept trace took a lock and a lookup
_PII_RULE_ACTIONS = Children(metrics.PII_RULE_ACTIONS)
# fastavro's bytes without its per-call cost (one record per decided trace); its memo is a pure
# function's cache, so one encoder serves every job of the process
_DECISION_RECORDS = DecisionEncoder()
_AUDIT_RECORDS = AuditEncoder()  # likewise, one PII audit record per kept trace


class EmitRecords:
    """Record builders of ``Job`` (a mixin: the state is the job's)."""

    def _decision_record(
        self,
        trace_id: bytes,
        decision: Decision,
        partition: int,
        offsets: Iterable[int],
        decided_at_ns: int,
        trigger: str,
    ) -> Record:
        """The decision-log entry, written to the trace's input partition number. ``trigger``: the
        decision point that released the trace (its ``tailsift_decision_points_total`` label)."""
        value = _DECISION_RECORDS.encode(
            trace_id,
            decision.keep,
            decision.policy,
            decision.reason,
            decision.probability,
            decision.threshold,
            decision.dry_run_kept,
            decided_at_ns,
            partition,
            offsets,
            -1,
            trigger,
        )
        return Record(self.decisions_topic, trace_id, value, [], partition)

    def _sli_record(self, w: WindowAggregate, now_ns: int) -> bytes:
        if not isinstance(w, WindowAggregate):  # job.core native: the window writes its own Avro bytes
            return w.encode(self.worker_id, now_ns)
        return avro.encode(avro.SLI_WINDOW, window_record(w, self.worker_id, now_ns))

    def _dead_letter(self, msg: Received, reason: str, detail: str, now_ns: int, hold: Hold | None) -> Record:
        _DEADLETTERS(reason).inc()
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

    def _pii_audit(
        self, trace_id: bytes, counts: dict[str, int], holds: list[Hold], now_ns: int, late: bool, span_count: int
    ) -> None:
        """Counts (never values) of what protection changed → metrics and, per kept record, a
        PiiAudit record that holds its inputs like the kept record does."""
        for name, n in counts.items():
            kind, _, label = name.partition(":")
            (_PII_DETECTIONS if kind == "detector" else _PII_RULE_ACTIONS)(label).inc(n)
        if not self.config.privacy.audit:
            return
        for hold in holds:
            hold.count += 1
        value = _AUDIT_RECORDS.encode(trace_id, counts, self.protector.tokenizer.key_id, now_ns, late, span_count)
        self._pending.append(Record(self.pii_audit_topic, trace_id, value, list(holds)))
