"""The simulated worker clock of a replay: it follows the input's event time, never the wall clock.

A live worker's clock reads about the time a message was exported: its newest span end plus the
exporter's flush delay. A replay takes the newest span end of each message (the event time the
assembler uses in ``assemble.time: event``) and never goes backwards, so processing-time decision
points (``decision_wait``, ``root_quiet_gap``), rate caps and adaptive samplers (which read the
decision time they are given, ``TraceView.now_ns``) see the time the traffic had, at any replay
speed, the same on every run.

A message cannot move the clock further than ``max_jump_ns`` (``ingest.max_clock_skew_ms``) at
once unless the log agrees that time passed: its Kafka timestamp advanced by at least the rest of
the jump since the clock last moved. So one span stamped years ahead does not end the replay's
time (the job dead-letters it as ``invalid_timestamp``, as a live worker would), while a real gap
in the traffic — an idle night in the capture — is crossed.
"""

from __future__ import annotations


class SimClock:
    __slots__ = ("max_jump_ns", "now_ns", "_timestamp_ms")

    def __init__(self, max_jump_ns: int):
        if max_jump_ns < 0:
            raise ValueError("max_jump_ns must be >= 0")
        self.max_jump_ns = max_jump_ns
        self.now_ns: int | None = None  # None until the first message with an event time
        self._timestamp_ms = -1  # the Kafka timestamp of the message that last moved the clock

    def observe(self, event_ns: int | None, timestamp_ms: int = -1) -> int | None:
        """Advance to a message's event time (``None``: it has none, e.g. undecodable) if allowed;
        returns the clock."""
        if event_ns is None:
            return self.now_ns
        if self.now_ns is None:
            self.now_ns, self._timestamp_ms = event_ns, timestamp_ms
            return event_ns
        jump = event_ns - self.now_ns
        if jump <= 0:
            return self.now_ns
        if jump > self.max_jump_ns:
            if timestamp_ms < 0 or self._timestamp_ms < 0:
                return self.now_ns
            if (timestamp_ms - self._timestamp_ms) * 1_000_000 < jump - self.max_jump_ns:
                return self.now_ns
        self.now_ns = event_ns
        if timestamp_ms >= 0:
            self._timestamp_ms = timestamp_ms
        return event_ns
