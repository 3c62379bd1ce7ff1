"""Recent decisions, so late spans follow their trace's decision instead of starting a new one.

Two bounded fronts (the durable copy is the ``traces.decisions`` log, restored on assignment):

- kept traces: an LRU of ``KeptEntry`` — the decision plus the input offsets whose spans are
  already in ``traces.kept``. A replayed message (after a crash, before its offset was committed)
  whose offset is listed is skipped; a late one is emitted marked late and its offset added.
- dropped traces: a compact filter, two generations of 64-bit hashes of the trace ID. Nothing
  is emitted for a dropped trace, so all a late span needs is "dropped: yes". When the young
  generation is full the old one is discarded, so the filter remembers between ``dropped_size``
  and 2 × ``dropped_size`` traces at ~70 B each, against ~300 B for an LRU entry. A 64-bit hash
  collision (≈ n²/2⁶⁵) would drop a late span of an unrelated new trace: negligible.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from operators.decide import Decision


@dataclass(slots=True)
class KeptEntry:
    decision: Decision
    partition: int
    offsets: set[int] = field(default_factory=set)
    decided_at_ns: int = 0
    trigger: str = ""  # its decision point: a late span's rewrite of the record says the same


DROPPED = object()  # what ``get`` returns for a remembered drop


class DecisionCache:
    def __init__(self, kept_size: int = 100_000, dropped_size: int = 1_000_000):
        self.kept_size = kept_size
        self.dropped_size = dropped_size
        self._kept: OrderedDict[bytes, KeptEntry] = OrderedDict()
        self._dropped_young: set[int] = set()
        self._dropped_old: set[int] = set()

    def __len__(self) -> int:
        return len(self._kept) + len(self._dropped_young) + len(self._dropped_old)

    def get(self, trace_id: bytes) -> KeptEntry | object | None:
        """``KeptEntry`` for a kept trace, ``DROPPED`` for a dropped one, None if unknown."""
        entry = self._kept.get(trace_id)
        if entry is not None:
            self._kept.move_to_end(trace_id)
            return entry
        if self.dropped_size:
            h = hash(trace_id)
            if h in self._dropped_young or h in self._dropped_old:
                return DROPPED
        return None

    def remember(
        self,
        trace_id: bytes,
        decision: Decision,
        partition: int,
        offsets=(),
        decided_at_ns: int = 0,
        trigger: str = "",
    ) -> KeptEntry | None:
        """Record a decision (kept: with the input offsets emitted for it). Returns the kept entry."""
        if not decision.keep:
            self._kept.pop(trace_id, None)
            if self.dropped_size:
                young = self._dropped_young
                young.add(hash(trace_id))
                if len(young) >= self.dropped_size:
                    self._dropped_old, self._dropped_young = young, set()
            return None
        entry = self._kept.get(trace_id)
        if entry is None:
            entry = self._kept[trace_id] = KeptEntry(decision, partition, set(offsets), decided_at_ns, trigger)
        else:
            entry.decision = decision
            entry.offsets.update(offsets)
        self._kept.move_to_end(trace_id)
        if len(self._kept) > self.kept_size:
            self._kept.popitem(last=False)
        return entry

    def forget(self, trace_id: bytes) -> None:
        """Forget one trace's decision (it was never written: its record was discarded)."""
        self._kept.pop(trace_id, None)
        h = hash(trace_id)
        self._dropped_young.discard(h)
        self._dropped_old.discard(h)

    def forget_partitions(self, partitions) -> int:
        """Drop kept entries of input partitions this worker no longer owns (their next owner
        restores them from the decision log). Drops stay: the filter cannot tell partitions apart,
        and a remembered drop is durable in the log already. Returns how many entries went."""
        lost = set(partitions)
        gone = [t for t, e in self._kept.items() if e.partition in lost]
        for t in gone:
            del self._kept[t]
        return len(gone)

    def clear(self) -> None:
        """Forget everything (a rewind: the log is the durable copy)."""
        self._kept.clear()
        self._dropped_young.clear()
        self._dropped_old.clear()
