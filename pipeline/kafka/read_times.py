"""The group's read time: how far the whole input is read, for the decisions of traces whose spans
may still come as re-keyed copies from another partition (``operators.read_progress``, README
"Guarantees").

A message read on partition A that holds spans of a trace whose canonical partition is B is copied
to B (re-keyed); the copy is written when A's owner commits, and read when B's owner gets to it. B's
owner cannot see A's backlog — A may belong to another worker, or to none for a while (killed,
restarting) — so by B's read progress alone it decides such a trace before the copy arrives.

Publishing: every worker commits, with each owned partition's offset, that partition's *read time*
in the checkpoint metadata (``pipeline.kafka.checkpoint``, ``read_ms``): the Kafka time up to which
it has read the partition — or, caught up, its clock less ``CAUGHT_UP_MARGIN_MS``. It commits in
the same transaction as the re-keyed copies of what was read, so a read time that is visible
never runs ahead of its copies; a dead worker's partitions keep the last read time it committed
until their next owner moves it, so they hold decisions instead of being skipped as idle.

Reading: every ``REFRESH_S``, without blocking the worker's loop (a snapshot taken on a helper
thread, ``pipeline.kafka.group_snapshot``, its future looked at once per loop step; not the
AdminClient, which aborts the process after a broker restart — see there):

1. the group's committed offsets of every input partition (not stable-only: what is committed,
   never a pending transaction's) → each partition's read time;
2. then the end offsets (the high watermark, not the last stable offset that a transaction left
   open holds back: ``pipeline.kafka.group_snapshot``) of the partitions this worker owns — every
   copy the commits seen in 1 wrote lies below them.

A snapshot counts for an owned partition once the worker's position there reaches the end offset
taken after it (the copies are read, so they are in their traces' buffers). The group read time of
owned partition p is the lowest read time of every *other* input partition: p's own messages are
never re-keyed to p, and p's own reading is the local guard's. A partition with no read time
(nothing committed with one yet) holds every decision — within the assembler's bounds.

Only partitions that re-key are waited for (``assemble.group_read_time: auto``, the default): each
checkpoint also says when its partition's reader last re-keyed a message (``rekeyed_ms``,
committed with the copies); a partition that did not within ``REKEY_MEMORY_MS`` holds no copy for
anyone and is left out. When no other partition re-keys, a snapshot lets every trace go at once,
without reading to its end offset: input keyed by trace ID (``make bench``'s) waits for nothing.
A worker does not wait for the poll to learn what it re-keyed itself: the partitions it re-keyed
from lately (``update``'s ``rekeying``) are waited for at once. The price: a partition's *first*
misplaced message after a quiet hour is not waited for — its trace may be decided before the copy
arrives (a late span); the next ones are. ``true`` waits for
every partition, re-keying or not.

Prior art: Kafka Streams has no read time across tasks — a repartition topic's task decides by its
own stream time, and records later than the grace period are dropped (``max.task.idle.ms`` only
waits for the co-partitioned inputs of one task). Flink's watermarks through a shuffle are the
model: each downstream channel carries its upstreams' watermarks and an operator takes the
minimum. Here the watermark travels in the committed offsets' metadata instead of in band, so
exactly-once needs nothing new: the time and the copies commit together. Cheap: an OffsetFetch and
two ListOffsets per owned partition per ``REFRESH_S`` per worker, nothing per span.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from operators.read_progress import REACHED
from pipeline.config import Config
from pipeline.kafka.checkpoint import Checkpoint
from pipeline.kafka.group_snapshot import GroupSnapshots

log = logging.getLogger("tailsift")

REFRESH_S = 0.25  # how often the group's read times are fetched (two requests)
# a partition counts as re-keying (its read time waited for) this long after its reader last
# re-keyed a message: long enough for producers that misplace now and then (an hourly batch job)
REKEY_MEMORY_MS = 3_600_000
# the floor of a partition that no other partition can send copies to: nothing to wait for
NO_WAIT_MS = 1 << 52
REQUEST_TIMEOUT_S = 10.0  # a broker away: the snapshot fails, the next one is asked a period later
# a caught-up partition's read time trails its owner's clock by this much: a message stamped
# (CreateTime) before the commit may still be in its producer's linger or on the wire, not in the
# high watermark librdkafka last saw
CAUGHT_UP_MARGIN_MS = 1_000
UNKNOWN_NS = -1


class GroupReadTimes:
    """One worker's view of the group's read time, per owned partition."""

    def __init__(
        self,
        config: Config,
        topic: str,
        partitions: int,
        snapshots: Any = None,
        clock=time.time,
    ):
        self.snapshots = snapshots if snapshots is not None else GroupSnapshots(config, topic, partitions)
        # auto: wait only for partitions whose readers re-key (their checkpoints' rekeyed_ms)
        self.only_rekeying = config.assemble.group_read_time == "auto"
        self.clock = clock  # wall clock (s): the checkpoints' rekeyed_ms are worker-clock times
        self._waited: set[int] | None = None  # of step 1: the partitions waited for (None: all)
        self.topic = topic
        self.partitions = partitions
        self._fetch: Future | None = None  # the snapshot being taken (group_snapshot)
        self._times: dict[int, int] = {}  # partition → committed read time (ms, -1: none), of step 1
        self._next_s = 0.0
        # owned partition → snapshots not read to yet: [(end offset, Floor)], the oldest and the
        # newest (a newer one replaces the newest: its end is no lower)
        self._pending: dict[int, list[tuple[int, Floor]]] = {}
        self._in_force: dict[int, Floor] = {}  # owned partition → the group read time in force
        # partitions this worker re-keyed from lately (auto): waited for by the snapshots it takes
        self._rekeying: set[int] = set()

    def update(
        self, owned: Iterable[int], positions: dict[int, int], now_s: float, rekeying: Iterable[int] = ()
    ) -> dict[int, int]:
        """Advance the exchange (never waits) and return, per owned partition, the group's read time
        in ns (``UNKNOWN_NS`` while none is in force). ``positions``: the worker's next offset to
        read per owned partition (-1: none). ``rekeying``: the partitions this worker re-keyed a
        message from in the last ``REKEY_MEMORY_MS`` — waited for at once (auto), not only once a
        snapshot of the committed checkpoints has read that (every ``REFRESH_S``, and the commit
        before it: a trace could go before its copy, written by this very worker, arrived)."""
        owned = set(owned)
        self._rekeying = set(rekeying)
        self._poll(owned, now_s)
        out = {}
        for p in owned:
            pending = self._pending.get(p)
            if pending:
                pos = positions.get(p, -1)
                while pending and (pending[0][0] <= 0 or pos >= pending[0][0]):
                    # the newest snapshot read to is in force (it may say "nothing to wait for" and
                    # a later one name a partition that started re-keying)
                    self._in_force[p] = pending.pop(0)[1]
            floor = self._in_force.get(p)
            t = floor.with_rekeying(p, self._rekeying) if floor is not None else -1
            out[p] = REACHED if t >= NO_WAIT_MS else t * 1_000_000 if t >= 0 else UNKNOWN_NS
        for p in [p for p in self._in_force if p not in owned]:
            del self._in_force[p]
        for p in [p for p in self._pending if p not in owned]:
            del self._pending[p]
        return out

    def forget(self, partitions: Iterable[int]) -> None:
        """Start over on these partitions (assigned anew, or rewound: their position went back, so
        what the old snapshots say was read there must be read again)."""
        for p in partitions:
            self._in_force.pop(p, None)
            self._pending.pop(p, None)

    def _poll(self, owned: set[int], now_s: float) -> None:
        if self._fetch is not None:
            if not self._fetch.done():
                return
            future, self._fetch = self._fetch, None
            try:
                committed, ends = future.result()
            except Exception as exc:  # noqa: BLE001 - a broker away: the next refresh asks again
                log.debug("group read times: snapshot unavailable (%s)", exc)
                return
            self._times = read_times(committed, self.topic)
            if self.only_rekeying:
                since = int(self.clock() * 1000) - REKEY_MEMORY_MS
                self._waited = rekeying(committed, self.topic, since)
            self._snapshot(owned, ends)
            return
        if now_s >= self._next_s:
            self._next_s = now_s + REFRESH_S
            self._fetch = self.snapshots.fetch(sorted(owned), REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.snapshots.close()

    def _snapshot(self, owned: set[int], ends: dict[int, int]) -> None:
        waited = None if self._waited is None else self._waited | self._rekeying
        floors = group_floors(self._times, self.partitions, waited)
        for p, end in ends.items():
            if p not in owned:
                continue
            pending = self._pending.setdefault(p, [])
            floor = Floor(floors.get(p, -1), self._times, waited)
            # no copy to wait for: in force at once, with no end offset to read to first
            entry = (0, floor) if floor.ms >= NO_WAIT_MS else (end, floor)
            if len(pending) >= 2:
                pending[-1] = entry
            else:
                pending.append(entry)


@dataclass(frozen=True)
class Floor:
    """A snapshot's group read time for one owned partition (ms; -1: unknown; ``NO_WAIT_MS``:
    nothing to wait for), with what it was taken from: every partition's committed read time, and
    the partitions waited for (None: every one)."""

    ms: int
    times: dict[int, int]
    waited: set[int] | None

    def with_rekeying(self, p: int, rekeying: set[int]) -> int:
        """The floor once partitions this worker re-keyed from since are waited for too: lowered to
        their read times in the same snapshot (-1 without one: unknown). Sound without reading
        to the snapshot's end again: a partition it did not wait for had committed no copy (its
        checkpoint said so), so the copies to wait for are the ones read after it."""
        if self.waited is None or not rekeying:
            return self.ms
        t = self.ms
        for q in rekeying:
            if q != p and q not in self.waited:
                t = min(t, self.times.get(q, -1))
        return t


def read_times(committed: Iterable[TopicPartition], topic: str) -> dict[int, int]:
    """Partition → the read time (ms) its committed checkpoint carries; -1 without one."""
    out = {}
    for tp in committed:
        if tp.topic != topic:
            continue
        cp = Checkpoint.decode(tp.metadata) if tp.offset >= 0 else None
        out[tp.partition] = cp.read_ms if cp is not None else -1
    return out


def rekeying(committed: Iterable[TopicPartition], topic: str, since_ms: int) -> set[int]:
    """Partitions whose committed checkpoint says their reader re-keyed a message at ``since_ms``
    or later: the only ones that can hold copies for another partition."""
    out = set()
    for tp in committed:
        if tp.topic != topic or tp.offset < 0:
            continue
        cp = Checkpoint.decode(tp.metadata)
        if cp is not None and cp.rekeyed_ms >= since_ms:
            out.add(tp.partition)
    return out


def group_floors(times: dict[int, int], partitions: int, waited: set[int] | None = None) -> dict[int, int]:
    """Per partition p, the lowest read time of every other input partition that is ``waited`` for
    (None: every one) — ms; -1 when one has none; ``NO_WAIT_MS`` when there is no such partition
    (a single one, or none re-keys): how far everything that may be re-keyed to p is read."""
    lowest, lowest_at, second = None, -1, None
    for q in range(partitions):
        if waited is not None and q not in waited:
            continue
        t = times.get(q, -1)
        if lowest is None or t < lowest:
            lowest, lowest_at, second = t, q, lowest
        elif second is None or t < second:
            second = t
    out = {}
    for p in range(partitions):
        others = second if p == lowest_at else lowest
        out[p] = NO_WAIT_MS if others is None else others
    return out
