"""Which input offsets are safe to commit: a per-partition low watermark.

The input topic is tailsift's write-ahead log. A message may be committed only when everything
derived from it has been durably written: its trace decided and emitted (or dropped), and every
SLI window it contributed to emitted. Each message therefore gets a ``Hold`` with a count of
outstanding obligations; when the count reaches zero the message is done. Offsets become
committable strictly in arrival order per partition: a done message behind an undone one waits.
(Faust's own bookkeeping mis-handles out-of-order acks, so the pipeline acks only what ``ready``
returns, in order.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any


class Hold:
    __slots__ = ("partition", "offset", "ref", "count")

    def __init__(self, partition: int, offset: int, ref: Any, count: int):
        self.partition = partition
        self.offset = offset
        self.ref = ref
        self.count = count

    def __repr__(self) -> str:
        return f"Hold(p{self.partition}@{self.offset}, count={self.count})"


class CommitTracker:
    def __init__(self) -> None:
        self._pending: dict[int, deque[Hold]] = {}
        self._dirty: set[int] = set()
        self._size = 0

    def __len__(self) -> int:
        """Messages received and not yet handed out as committable."""
        return self._size

    def track(self, partition: int, offset: int, ref: Any, count: int = 0) -> Hold:
        """Register a message (in arrival order for its partition) with ``count`` obligations."""
        hold = Hold(partition, offset, ref, count)
        self._pending.setdefault(partition, deque()).append(hold)
        self._size += 1
        if count == 0:
            self._dirty.add(partition)
        return hold

    def track_all(self, partitions: list[int], offsets: list[int], refs: list[Any]) -> list[Hold]:
        """Register a batch of messages (in arrival order per partition) at once, each with one
        obligation — being ingested — until ``settle`` gives it its own: none of them can become
        committable before its batch is through ingest, even if that fails half-way."""
        holds = [Hold(p, o, r, 1) for p, o, r in zip(partitions, offsets, refs)]
        pending = self._pending
        queue = None
        last = None
        for hold in holds:
            if hold.partition != last:
                last = hold.partition
                queue = pending.get(last)
                if queue is None:
                    queue = pending[last] = deque()
            queue.append(hold)  # type: ignore[union-attr]
        self._size += len(holds)
        return holds

    def settle(self, hold: Hold, count: int) -> None:
        """A message ``track_all`` registered has ``count`` obligations (instead of being ingested)."""
        hold.count = count
        if count == 0:
            self._dirty.add(hold.partition)

    def release(self, hold: Hold, n: int = 1) -> None:
        """One (or ``n``) of the message's obligations is met."""
        hold.count -= n
        if hold.count < 0:
            raise AssertionError(f"{hold!r} released more often than held")
        if hold.count == 0:
            self._dirty.add(hold.partition)

    def ready(self) -> list[Hold]:
        """Done messages at the head of each partition, in offset order; they leave the tracker."""
        out: list[Hold] = []
        for partition in self._dirty:
            queue = self._pending.get(partition)
            while queue and queue[0].count == 0:
                out.append(queue.popleft())
        self._size -= len(out)
        self._dirty.clear()
        return out

    def revoke(self, partitions: Iterable[int]) -> int:
        """Forget partitions this worker no longer owns; their uncommitted messages will be
        consumed again by the new owner. Returns how many messages were forgotten."""
        dropped = 0
        for partition in partitions:
            dropped += len(self._pending.pop(partition, ()))
            self._dirty.discard(partition)
        self._size -= dropped
        return dropped

    def heads(self) -> dict[int, Hold]:
        """Per partition, the oldest message not yet committable (its offset is the watermark)."""
        return {p: q[0] for p, q in self._pending.items() if q}

    def oldest_offsets(self) -> dict[int, int]:
        """Per partition, the offset of the oldest message not yet committable (the watermark)."""
        return {p: q[0].offset for p, q in self._pending.items() if q}
