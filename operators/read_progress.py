"""How far each input partition has been read, in Kafka message time: the backlog guard of
processing-time decision points (``operators.assemble``).

A processing-time decision point is on the worker's clock, but during a backlog (a broker outage, a
restarted worker, a drain after downtime) the worker reads a partition far behind real time: a
trace's later spans may sit unread a few offsets further on when its clock runs out. So a trace
also waits until its partition has been read far enough — until the partition is *caught up* (the
data plane saw nothing left to read at its last look) or it has read messages timestamped at least
``decision_wait`` past the trace's first message.

Message timestamps come from producers (CreateTime) and can be hostile, so neither a far-future
nor a far-past one may stall the partition or release its traces early:

- every timestamp is clamped to at most the worker clock + ``max_clock_skew`` (a stream of future
  timestamps moves the partition's time no further than that);
- the partition's time advances to the *median* of each block of ``BLOCK`` consecutive messages,
  never backwards: a minority of far-future or far-past timestamps in a block moves nothing, at
  the price of trailing the newest message by about a block (the guard then waits that much
  longer, never less);
- a message's own stamp is at least the partition's time when it is read, so a trace whose first
  message claims a far-past time still waits ``decision_wait`` of partition time from where it
  was read; one that claims a far-future time delays only its own trace, up to the assembler's
  hard bound.

**The group's read time** (``set_group``). A span can also reach a trace's partition as a
*re-keyed copy* of a message read on another partition (unkeyed or mis-partitioned input): it is
written to this partition when *that* partition's reader commits, so this partition being read far
enough proves nothing about it. The data plane therefore hands over, per owned partition, the
input's read time as far as the group has committed it and this partition has read what that commit
wrote (``pipeline.kafka.read_times``): the lowest read time any *other* input partition's owner
committed. A trace waits for both — its own partition read far enough, and the group's read time
past its stamp + wait — within the assembler's bounds (the hard bound, the buffer bound), so a
partition nobody reads (a dead worker's, until the group moves it) delays decisions, never
stalls them. Never set: no group read time (a single worker test, the bench), nothing waits for it.

Pure bookkeeping: no I/O, no clock reads (time is passed in).
"""

from __future__ import annotations

from collections.abc import Iterable

# messages per median block: odd, so the median is one of them; 4 of 9 may be outliers
BLOCK = 9
UNKNOWN = -1  # no usable timestamp (Kafka's -1: none; or nothing read yet)
REACHED = 1 << 63  # a read mark beyond every stamp: nothing left to wait for


class ReadProgress:
    __slots__ = ("max_skew_ns", "_time", "_block", "_behind", "_group")

    def __init__(self, max_skew_ns: int):
        self.max_skew_ns = max_skew_ns
        self._time: dict[int, int] = {}  # partition → its read time (ns): monotone block medians
        self._block: dict[int, list[int]] = {}  # partition → clamped timestamps of the current block
        self._behind: frozenset[int] = frozenset()  # partitions not read to the end at the last look
        # partition → the group's read time (ns) as far as this partition has read its re-keyed
        # copies; None: the data plane exchanges none (nothing waits for it)
        self._group: dict[int, int] | None = None

    def read(self, partition: int, timestamp_ms: int, now_ns: int) -> int:
        """Account one message read from ``partition`` with its Kafka timestamp (ms; < 0: none).
        Returns the message's stamp (ns) for the assembler — clamped to [the partition's time,
        worker clock + skew] — or ``UNKNOWN``."""
        if timestamp_ms < 0:  # no timestamp (an old message format): wherever the partition is
            return self._time.get(partition, UNKNOWN)
        ts = timestamp_ms * 1_000_000
        ceiling = now_ns + self.max_skew_ns
        if ts > ceiling:
            ts = ceiling
        block = self._block.get(partition)
        if block is None:
            block = self._block[partition] = []
        block.append(ts)
        floor = self._time.get(partition, UNKNOWN)
        if len(block) >= BLOCK:
            block.sort()
            median = block[BLOCK // 2]
            block.clear()
            if median > floor:
                self._time[partition] = floor = median
        return ts if ts > floor else floor

    def time(self, partition: int) -> int:
        """The partition's read time (ns), ``UNKNOWN`` before its first full block."""
        return self._time.get(partition, UNKNOWN)

    def set_behind(self, partitions: Iterable[int]) -> None:
        """The partitions the data plane found not read to the end (lag > 0) at its last look; every
        other partition counts as caught up. Never called: every partition is caught up, so
        decision points are on the worker clock alone."""
        self._behind = frozenset(partitions)

    def is_behind(self, partition: int) -> bool:
        return partition in self._behind

    def set_group(self, read_times: dict[int, int]) -> None:
        """Per owned partition, the group's read time (ns; ``UNKNOWN`` while none is known): every
        re-keyed copy of a message stamped up to it is written and read on that partition."""
        self._group = read_times

    def own_mark(self, partition: int) -> int:
        """How far (ns, Kafka time) ``partition`` itself is read: ``REACHED`` when caught up."""
        return self._time.get(partition, UNKNOWN) if partition in self._behind else REACHED

    def mark(self, partition: int) -> int:
        """How far (ns, Kafka time) a trace on ``partition`` may count its spans read — its own
        partition's and the group's read time, the lower; ``REACHED`` when nothing holds it."""
        own = self._time.get(partition, UNKNOWN) if partition in self._behind else REACHED
        group = self._group
        if group is not None:
            g = group.get(partition, UNKNOWN)
            if g < own:
                return g
        return own

    def reached(self, partition: int, stamp_ns: int) -> bool:
        """True when a trace on ``partition`` waiting for ``stamp_ns`` needs no more reading: its
        partition caught up or read up to ``stamp_ns`` and the group's read time there too, or the
        wait has no stamp."""
        return stamp_ns < 0 or self.mark(partition) >= stamp_ns

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop all state of these partitions (revoked: the next owner reads them again)."""
        group = self._group
        for p in partitions:
            self._time.pop(p, None)
            self._block.pop(p, None)
            if group is not None:
                group.pop(p, None)
