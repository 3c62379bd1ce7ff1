"""Stage 4, protect: a kept trace's messages fully decoded (``Codec.kept_batches``), PII-protected,
annotated with the sampling facts, and encoded in the emit format (``Codec.encode_kept``) — split
into parts when larger than a record may be. Nothing here can fail the outbox: what cannot be
converted or encoded is dead-lettered with its reason and the rest of the trace is kept."""

from __future__ import annotations

from collections.abc import Callable

from operators.assemble import Buffered
from operators.decide import Decision
from operators.decision_cache import DROPPED
from operators.tracestate import with_threshold
from pipeline import metrics
from pipeline.codecs.avro_kept import AvroSpan, Fallback
from pipeline.codecs.interface import KeptFacts, Malformed
from pipeline.codecs.otlp import OtlpTrace
from pipeline.codecs.protowire import WireSpan
from pipeline.job.records import Received, Record


class Protect:
    """The kept-record stage of ``Job`` (a mixin: the state is the job's)."""

    def _kept_records(
        self,
        trace_id: bytes,
        decision: Decision,
        units: list[Buffered],
        now_ns: int,
        late: bool = False,
        forced: str = "",
    ) -> list[Record]:
        """Full decode (kept traces only) into a KeptTrace (several parts if it is too large for one
        record), sampling facts on every span.

        A span whose header decoded but whose ``detail`` does not is still kept — its trace was
        judged on sound headers — with ``tailsift.detail_error`` set, and its message is reported
        to the dead-letter topic so the producer can be found.

        Building one record never fails the outbox: a message that cannot be converted (an OTLP
        link ID of the wrong length, an event time beyond 2^63 - 1: checked here, not for every
        span at ingest) is dead-lettered with its reason and the rest of the trace is kept; so is
        one whose spans do not encode in ``emit.format`` (``encode_error``: found by encoding
        the messages one by one, only after the whole record failed). Empty when nothing is left."""
        reason = decision.reason + (f";forced={forced}" if forced else "")
        facts = KeptFacts(trace_id, decision.policy, reason, decision.adjusted_count, now_ns, late)
        sampling_attrs = {
            "sampling.policy": decision.policy,
            "sampling.reason": reason,
            "sampling.adjusted_count": facts.adjusted_count,
        }
        if late:
            sampling_attrs["sampling.late"] = True
        if decision.dry_run_kept is not None:
            sampling_attrs["sampling.dry_run_kept"] = decision.dry_run_kept
        written: list[tuple[Buffered, list[dict]]] = []  # (message, its batches) this record carries
        pii_counts: dict[str, int] = {}
        for unit in units:
            try:
                converted = self._kept_batches(trace_id, unit, sampling_attrs, decision.threshold, pii_counts, now_ns)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stream
                self._dead_letter_unit(trace_id, unit, exc, now_ns)
                continue
            written.append((unit, converted))

        encode_kept = self.emit_codec.encode_kept

        def encode_batches(batches: list[dict], part: int = 0, parts: int = 1) -> bytes:
            return encode_kept(facts, batches, part, parts)

        def encode(parts: list[tuple[Buffered, list[dict]]]) -> bytes:
            return encode_batches([b for _, converted in parts for b in converted])

        value = None
        while written and value is None:
            try:
                value = encode(written)
            except Exception:  # noqa: BLE001 - the encoder raises many types for values out of range
                # rare path: find the messages that do not encode on their own, dead-letter them, retry the rest
                fine = []
                for part in written:
                    try:
                        encode([part])
                    except Exception as exc:  # noqa: BLE001 - as above
                        self._dead_letter_unit(trace_id, part[0], exc, now_ns)
                    else:
                        fine.append(part)
                if len(fine) == len(written):  # each alone encodes, together they do not: give up on all
                    for part in written:
                        self._dead_letter_unit(trace_id, part[0], ValueError(), now_ns)
                    fine = []
                written = fine
        if value is None:
            return []
        batches = [b for _, converted in written for b in converted]
        span_count = sum(len(b["spans"]) for b in batches)
        holds = [unit.hold for unit, _ in written]
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
        self,
        encode_batches: Callable[..., bytes],
        written: list[tuple[Buffered, list[dict]]],
        trace_id: bytes,
        now_ns: int,
    ) -> list[bytes]:
        """A kept record larger than ``max_record_bytes`` (the output topics' ``max.message.bytes``
        and the producer's limit) as several parts that each fit: Avro ``KeptTrace`` parts with
        ``part``/``parts``, or several OTLP requests of the same trace. The spans are halved until
        each part fits; a single span that cannot fit alone is dead-lettered (``span_too_large``) and
        left out — no record can fail the transaction for its size."""
        limit = self.max_record_bytes
        parts: list[list[dict]] = []
        too_large: list[Buffered] = []  # input messages with a span too large for any record

        def fit(pieces: list[tuple[Buffered, dict]]) -> None:  # (message, batch) pieces
            if len(encode_batches([b for _, b in pieces])) <= limit:
                parts.append([b for _, b in pieces])
            elif len(pieces) > 1:
                fit(pieces[: len(pieces) // 2])
                fit(pieces[len(pieces) // 2 :])
            elif len(pieces[0][1]["spans"]) > 1:
                unit, b = pieces[0]
                half = len(b["spans"]) // 2
                fit([(unit, {**b, "spans": b["spans"][:half]})])
                fit([(unit, {**b, "spans": b["spans"][half:]})])
            elif pieces[0][1]["spans"] and all(u is not pieces[0][0] for u in too_large):
                too_large.append(pieces[0][0])

        fit([(unit, b) for unit, converted in written for b in converted])
        for unit in too_large:
            msg = Received(unit.hold.partition, unit.hold.offset, trace_id, unit.value)
            detail = f"a span of this message does not fit in one record of at most {limit} bytes"
            self._pending.append(self._dead_letter(msg, "span_too_large", detail, now_ns, None))
        if not parts:  # every span was too large: an empty part still carries the decision's facts
            parts = [[]]
        return [encode_batches(part, i, len(parts)) for i, part in enumerate(parts)]

    def _kept_batches(
        self, trace_id: bytes, unit: Buffered, sampling_attrs: dict, th: int | None, pii_counts: dict, now_ns: int
    ) -> list[dict]:
        """One input message's spans of a kept trace: fully decoded, protected, annotated.
        tailsift's own annotations (sampling facts, decode errors) are added after protection.
        OTLP written as ``otlp_proto``: the same spans from their own bytes (``KeptWriter``; with
        the native core, from the message's raw bytes in Rust: ``NativeKeptWriter``); Avro
        written as Avro likewise (``AvroKeptWriter``; native: ``NativeAvroKeptWriter``)."""
        if unit.handle is None and self._kept_natively():
            batches = self.native_kept.batches(unit.value, trace_id, sampling_attrs, th, pii_counts, self.protector)
            if batches is not None:
                return batches
            unit.handle = self.codec.decode_trace(unit.value, trace_id).handle  # the Python path reports it
        if self.kept_writer is not None and isinstance(unit.handle, OtlpTrace):
            return self.kept_writer.batches(unit.handle, sampling_attrs, th, pii_counts, self.protector)
        if self.avro_kept_writer is not None and isinstance(unit.handle, dict):
            try:
                return self.avro_kept_writer.batches(unit.handle, sampling_attrs, th, pii_counts, self.protector)
            except Fallback:
                pass  # the reference path below decides, and reports what it cannot write
        kept = self.codec.kept_batches(unit.value, unit.handle)
        protector = self.protector
        undecodable = {id(span) for span in kept.undecodable_spans}
        for b in kept.batches:
            for span in b["spans"]:
                if protector is not None:
                    protector.protect_span(span, pii_counts)
                if undecodable and id(span) in undecodable:
                    span["attributes"]["tailsift.detail_error"] = "undecodable span detail"
                span["attributes"].update(sampling_attrs)
                if th is not None:  # OTEP 235: record the consistent sampling threshold in tracestate
                    span["trace_state"] = with_threshold(span["trace_state"], th)
            if protector is not None:
                protector.protect_batch(b, pii_counts)  # resource, scope (OTLP: its attributes too)
        for b in kept.undecodable_resources:
            b["resource"]["tailsift.detail_error"] = "undecodable resource"
        if kept.problem:
            msg = Received(unit.hold.partition, unit.hold.offset, trace_id, unit.value)
            self._pending.append(self._dead_letter(msg, "detail_decode_error", kept.problem, now_ns, None))
        return kept.batches

    def _kept_natively(self) -> bool:
        """Kept traces written by the native core from a message's raw bytes, with ``job.core``
        native: OTLP as ``otlp_proto`` (``NativeKeptWriter``, the ``KeptWriter`` it shares in use)
        or Avro as Avro (``NativeAvroKeptWriter``, its ``AvroKeptWriter`` in use)."""
        if self.native_kept is None:
            return False
        return (self.kept_writer if self.emit_format == "otlp_proto" else self.avro_kept_writer) is not None

    def _dead_letter_unit(self, trace_id: bytes, unit: Buffered, exc: Exception, now_ns: int) -> None:
        """A kept trace's input message whose spans cannot be written: to the dead-letter topic,
        holding its offset there instead of on the kept record. The detail names the exception
        type only: encoder messages quote the offending values."""
        if isinstance(exc, Malformed):
            reason, detail = exc.reason, exc.detail
        else:
            reason, detail = "encode_error", f"kept trace not encodable as {self.emit_format}: {type(exc).__name__}"
        msg = Received(unit.hold.partition, unit.hold.offset, trace_id, unit.value)
        self._pending.append(self._dead_letter(msg, reason, detail, now_ns, unit.hold))

    def _follow_links(self, trace_id: bytes, batches: list[dict]) -> None:
        """Note the traces this kept trace's spans link to, so they are kept when decided here."""
        for batch in batches:
            for span in batch["spans"]:
                links = (
                    span.link_trace_ids
                    if isinstance(span, WireSpan | AvroSpan)
                    else [ln["trace_id"] for ln in span.get("links") or ()]
                )
                for linked in links:
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
