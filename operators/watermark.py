"""Per-partition event-time watermarks with allowed lateness, and idle tracking.

A partition's watermark is the newest event time seen on it minus ``allowed_lateness_ns``: the
assembler treats every event-time deadline at or below it as passed. Watermarks only move forward
and depend only on the sequence of event times observed on that partition, so a replay of the same
records yields the same watermarks. Partitions are independent (a trace lives on one partition).

Idle tracking runs on the worker's clock instead: a partition whose input stopped never advances
its watermark again, so the caller asks :meth:`PartitionWatermarks.idle` for partitions that got
nothing for a while and flushes them. Pure bookkeeping, no I/O, no clock reads.
"""

from __future__ import annotations

from collections.abc import Iterable


class PartitionWatermarks:
    __slots__ = ("allowed_lateness_ns", "_max_event", "_touched")

    def __init__(self, allowed_lateness_ns: int = 0):
        if allowed_lateness_ns < 0:
            raise ValueError("allowed_lateness_ns must be >= 0")
        self.allowed_lateness_ns = allowed_lateness_ns
        self._max_event: dict[int, int] = {}  # partition → newest event time seen
        self._touched: dict[int, int] = {}  # partition → worker time of its last input since the last idle report

    def observe(self, partition: int, event_ns: int) -> int:
        """Account one event time seen on ``partition``; returns the partition's (new) watermark."""
        m = self._max_event.get(partition)
        if m is None or event_ns > m:
            self._max_event[partition] = m = event_ns
        return m - self.allowed_lateness_ns

    def get(self, partition: int) -> int | None:
        """The partition's watermark, or None before its first event."""
        m = self._max_event.get(partition)
        return None if m is None else m - self.allowed_lateness_ns

    def max_event(self, partition: int) -> int | None:
        """The newest event time seen on the partition (the watermark without the lateness)."""
        return self._max_event.get(partition)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop all state of these partitions (revoked: the next owner rebuilds it from the input)."""
        for p in partitions:
            self._max_event.pop(p, None)
            self._touched.pop(p, None)

    def touch(self, partition: int, now_ns: int) -> None:
        """The partition received input at worker time ``now_ns`` (so it has buffered data)."""
        self._touched[partition] = now_ns

    def idle(self, now_ns: int, idle_ns: int) -> list[int]:
        """Partitions touched since they were last reported idle that got nothing for ``idle_ns``
        of worker time, in partition order. Each is reported once; the next ``touch`` re-arms it."""
        if not self._touched:
            return []
        cutoff = now_ns - idle_ns
        out = sorted(p for p, t in self._touched.items() if t <= cutoff)
        for p in out:
            del self._touched[p]
        return out

    def partitions(self) -> list[int]:
        return sorted(self._max_event)
