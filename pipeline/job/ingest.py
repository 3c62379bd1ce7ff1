"""Stage 1, ingest: one loop for every wire format. Each received message goes through the
configured codec (``pipeline.codecs.interface.Codec``) into per-trace ``Fragment``s; a malformed
one is dead-lettered with its reason, one off its trace's canonical partition is re-keyed
(``pipeline.job.rekey``; in the native core, in the same call as the decode),
and each fragment is counted in the SLI windows (before sampling) and routed (``route``)."""

from __future__ import annotations

from collections.abc import Iterable

from operators.assemble import Buffered
from operators.commit import Hold
from pipeline import metrics
from pipeline.codecs import decode_each
from pipeline.codecs.interface import Malformed, Rekeyed
from pipeline.job import rekey as rekeying
from pipeline.job.records import Consumed, Received, Record

_BUFFERED = metrics.MESSAGES.labels("buffered")
# label children bound once: .labels() per message would cost a dict lookup and a lock each time
_REKEYED = metrics.MESSAGES.labels("rekeyed")
_TOO_LARGE_TO_REKEY = metrics.MESSAGES.labels("too_large_to_rekey")


class Ingest:
    """The ingest stage of ``Job`` (a mixin: the state is the job's)."""

    def ingest(self, messages: Consumed | Iterable[Received], now_ns: int) -> None:
        """Take a batch of received messages (``Consumed`` columns, or ``Received`` messages). A
        message feeding N traces holds N trace obligations (plus one per SLI window it opens) on
        its offset."""
        batch = messages if isinstance(messages, Consumed) else Consumed.of(list(messages))
        if self.counts_natively:
            n_spans = self._ingest_counted(batch, now_ns)
        else:
            n_spans = self._ingest_fragments(batch, now_ns)
        # gauges first: a scrape (another thread) that sees these spans counted must also see them
        # buffered and uncommitted — else "ingested everything, nothing pending" reads as drained
        self._buffer_gauges()
        metrics.SPANS.inc(n_spans)

    def _ingest_counted(self, batch: Consumed, now_ns: int) -> int:
        """The native path (``NativeCodec.ingest_counted``, OTLP and Avro): one call into Rust decodes, checks
        and places the batch and counts its spans in the SLI windows; what comes back per trace
        fragment is four values (trace ID, span count, has a root, newest end), not a header dict
        per span. Holds are tracked for the whole batch first (the windows hold them), then settled
        per message once its obligations are known. Returns the spans ingested."""
        parts, offsets, values, stamps = batch.partitions, batch.offsets, batch.values, batch.timestamps_ms
        tracker = self.tracker
        holds = tracker.track_all(parts, offsets, batch.refs)
        replays = self._note_ingested(batch)
        # a replayed message's SLI counts are written already: the windows count it nowhere
        sli_holds = holds if replays is None else [None if r else h for h, r in zip(holds, replays)]
        limit = self.max_record_bytes
        results, touched = self.codec.ingest_counted(
            batch,
            now_ns,
            self.sli,
            sli_holds,
            self.rekey,
            self.partitioning,
            self.input_partitions,
            limit,
            rekeying.max_copies_bytes(limit),
        )
        read, route = self.assembler.read, self._route_counted
        n_spans = buffered = 0
        for i, result in enumerate(results):
            partition = parts[i]
            stamp = read(partition, stamps[i], now_ns)
            hold = holds[i]
            if type(result) is not list:
                if type(result[0]) is str:  # (reason, detail): dead-lettered
                    self._reject_held(batch.message(i), Malformed(result[0], result[1]), now_ns, hold, replays, i)
                    continue
                if result[0] is not None:  # its copies, one per destination partition, to publish on the input topic
                    self._rekey_held(batch.message(i), result[0], now_ns, hold, replays is not None and replays[i])
                    continue
                _TOO_LARGE_TO_REKEY.inc()  # buffered where it arrived
                result = result[1]
            tracker.settle(hold, len(result) + touched[i])
            value = values[i]
            for trace_id, span_count, has_root, end_ns in result:
                n_spans += span_count
                buffered += route(
                    trace_id, span_count, has_root, end_ns, partition, Buffered(hold, value), now_ns, stamp
                )
        if buffered:
            _BUFFERED.inc(buffered)
        return n_spans

    def _ingest_fragments(self, batch: Consumed, now_ns: int) -> int:
        """Every other codec: per message its ``Fragment``s (one native call for the batch, or the
        Python codec per message), each counted in the SLI windows and routed. Returns the spans
        ingested."""
        sli, tracker, rekey, codec = self.sli, self.tracker, self.rekey, self.codec
        read = self.assembler.read  # every message read moves its partition's read time
        n_spans = 0
        messages = [batch.message(i) for i in range(len(batch))]
        # one call for the batch: the native core walks every message in Rust — and places it too,
        # building the re-keyed copies and header dicts only for the messages that stay (a
        # re-keyed message is read again as its copies)
        placed = rekey and getattr(codec, "places", False)
        if placed:
            limit = self.max_record_bytes
            decoded = codec.decode_placed(
                messages, now_ns, self.partitioning, self.input_partitions, limit, rekeying.max_copies_bytes(limit)
            )
        else:
            decoded = decode_each(codec, batch.values, now_ns)
        for msg, fragments in zip(messages, decoded):
            stamp = read(msg.partition, msg.timestamp_ms, now_ns)
            value = msg.value
            replay = self._replayed(msg)
            if isinstance(fragments, Malformed):
                self._reject(msg, fragments, now_ns, replay)
                continue
            if rekey and not placed:
                fragments = rekeying.place(
                    codec, self.partitioning, self.input_partitions, self.max_record_bytes, msg, fragments
                )
            if isinstance(fragments, Rekeyed):
                if self._rekey(msg, fragments, replay, now_ns):
                    continue
                fragments = fragments.fragments
            partition = msg.partition
            hold = tracker.track(partition, msg.offset, msg.ref, len(fragments))
            for fragment in fragments:
                n_spans += fragment.span_count
                if not replay:
                    hold.count += sli.add_groups(partition, fragment.groups, hold)
                self._route(fragment, partition, Buffered(hold, value, fragment.handle), now_ns, stamp)
        return n_spans

    def _note_ingested(self, batch: Consumed) -> list[bool] | None:
        """``_replayed`` for a whole batch: its offsets noted as ingested (for the next checkpoint);
        per message whether the restored checkpoint says its side outputs are written already —
        None when none is (no checkpoint restored: every message past a restart's replay)."""
        parts, offsets = batch.partitions, batch.offsets
        self._processed.update(zip(parts, offsets))  # offsets rise per partition: the last one stays
        through = self._replayed_through
        if not through:
            return None
        replays = [o <= through.get(p, -1) for p, o in zip(parts, offsets)]
        return replays if any(replays) else None

    def _reject_held(
        self, msg: Received, bad: Malformed, now_ns: int, hold: Hold, replays: list[bool] | None, i: int
    ) -> None:
        """``_reject`` for a message ``track_all`` registered."""
        if replays is not None and replays[i]:
            self.tracker.settle(hold, 0)
            return
        self.tracker.settle(hold, 1)
        self._pending.append(self._dead_letter(msg, bad.reason, bad.detail, now_ns, hold))

    def _rekey_held(
        self, msg: Received, parts: list[tuple[bytes, int | None, bytes]], now_ns: int, hold: Hold, replay: bool
    ) -> None:
        """``_rekey`` for a message ``track_all`` registered whose copies were built."""
        self.rekeyed_ns[msg.partition] = now_ns
        if replay:
            self.tracker.settle(hold, 0)
            return
        self.tracker.settle(hold, len(parts))
        topic, pending = self.input_topic, self._pending
        for key, partition, part in parts:
            pending.append(Record(topic, key, part, [hold], partition))
        _REKEYED.inc()

    def _rekey(self, msg: Received, rekeyed: Rekeyed, replay: bool, now_ns: int) -> bool:
        """Spans of one trace must meet on one partition: publish the message's copies, one per
        destination partition (``pipeline.job.rekey``). False (the caller buffers the message
        where it arrived) when a copy could not be written — larger than a record may be — rather
        than failing every transaction. Notes that its partition re-keys (``rekeyed_ns``): the data
        plane tells the group, whose decisions then wait for this partition's read time."""
        parts = rekeyed.parts
        if parts is None:
            _TOO_LARGE_TO_REKEY.inc()
            return False
        self.rekeyed_ns[msg.partition] = now_ns
        if replay:
            self.tracker.track(msg.partition, msg.offset, msg.ref, 0)
            return True
        hold = self.tracker.track(msg.partition, msg.offset, msg.ref, len(parts))
        topic, pending = self.input_topic, self._pending
        for key, partition, part in parts:
            pending.append(Record(topic, key, part, [hold], partition))
        _REKEYED.inc()
        return True

    def _replayed(self, msg: Received) -> bool:
        """Note ``msg`` as ingested (for the next checkpoint). True when the restored checkpoint says
        its side outputs (SLI counts, dead letter, re-keyed copy) are written already: only its trace
        routing runs again, and that dedups itself (exactly_once)."""
        self._processed[msg.partition] = msg.offset
        through = self._replayed_through
        return bool(through) and msg.offset <= through.get(msg.partition, -1)

    def _reject(self, msg: Received, bad: Malformed, now_ns: int, replay: bool) -> None:
        """A malformed message: to the dead-letter topic (holding its offset until written), unless
        a replay finds it dead-lettered already."""
        if replay:
            self.tracker.track(msg.partition, msg.offset, msg.ref, 0)
            return
        hold = self.tracker.track(msg.partition, msg.offset, msg.ref, 1)
        self._pending.append(self._dead_letter(msg, bad.reason, bad.detail, now_ns, hold))
