"""Stage 1, ingest: one loop for every wire format. Each received message goes through the
configured codec (``pipeline.codecs.interface.Codec``) into per-trace ``Fragment``s; a malformed
one is dead-lettered with its reason, one off its trace's canonical partition is re-keyed
(``pipeline.job.rekey``; in the native core, in the same call as the decode),
and each fragment is counted in the SLI windows (before sampling) and routed (``route``)."""

from __future__ import annotations

from collections.abc import Iterable

from operators.assemble import Buffered
from pipeline import metrics
from pipeline.codecs import decode_each
from pipeline.codecs.interface import Malformed, Rekeyed
from pipeline.job import rekey as rekeying
from pipeline.job.records import Received, Record

# label children bound once: .labels() per message would cost a dict lookup and a lock each time
_REKEYED = metrics.MESSAGES.labels("rekeyed")
_TOO_LARGE_TO_REKEY = metrics.MESSAGES.labels("too_large_to_rekey")


class Ingest:
    """The ingest stage of ``Job`` (a mixin: the state is the job's)."""

    def ingest(self, messages: Iterable[Received], now_ns: int) -> None:
        """Take a batch of received messages. A message feeding N traces holds N trace obligations
        (plus one per SLI window it opens) on its offset."""
        sli, tracker, rekey, codec = self.sli, self.tracker, self.rekey, self.codec
        read = self.assembler.read  # every message read moves its partition's read time
        n_spans = 0
        messages = messages if isinstance(messages, list) else list(messages)
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
            decoded = decode_each(codec, [m.value for m in messages], now_ns)
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
        # gauges first: a scrape (another thread) that sees these spans counted must also see them
        # buffered and uncommitted — else "ingested everything, nothing pending" reads as drained
        self._buffer_gauges()
        metrics.SPANS.inc(n_spans)

    def _rekey(self, msg: Received, rekeyed: Rekeyed, replay: bool, now_ns: int) -> bool:
        """Spans of one trace must meet on one partition: publish the message's copies, one per
        trace, keyed by trace ID (``pipeline.job.rekey``). False (the caller buffers the message
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
