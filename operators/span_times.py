"""The bounds a span's times must meet before they reach an SLI window, a watermark or an encoder.

Producers and their clocks are not trusted: a time is data, and a hostile or broken one must be
refused at ingest (the caller dead-letters the message as ``invalid_timestamp``) rather than
found later, when it can no longer be refused without stopping the stream:

- ``0 < start`` and ``0 < end``: 0 is OTLP's "unset"; negative times do not encode as OTLP fixed64.
- ``end <= limit = 2**63 - 1 - window``: the end of the SLI window a span falls in must still fit an
  Avro ``long`` (one span near 2**63 made every SLI emission raise — a crash loop on one message).
- ``end <= now + max_skew``: a span that ends in the future opens an SLI window that closes only
  then (holding its input offset uncommitted until that time) and, in event time, moves its
  partition's watermark forward for good. Honest producers only differ from the worker by clock skew.
- ``start <= end + max_skew`` (and ``start <= limit``): a span may not start after it ends by more
  than clock skew; the SLI latency of a skewed span counts as 0.

Replays of old data are fine: there is no lower bound tied to the worker clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from operators.trace import SpanHeader

MAX_LONG = (1 << 63) - 1  # Avro long, and the largest time every output format can carry


class SpanTimeBounds:
    __slots__ = ("limit_ns", "max_skew_ns")

    def __init__(self, window_ns: int, max_skew_ns: int):
        if window_ns <= 0 or max_skew_ns < 0:
            raise ValueError("window_ns must be > 0 and max_skew_ns >= 0")
        self.limit_ns = MAX_LONG - window_ns
        self.max_skew_ns = max_skew_ns

    def latest(self, now_ns: int) -> int:
        """The latest end time a span may have at worker time ``now_ns``."""
        return min(now_ns + self.max_skew_ns, self.limit_ns)

    def violation(self, spans: Sequence[SpanHeader], now_ns: int) -> str | None:
        """None when every span's times are within bounds, else why the first one is not (no
        payload bytes in the text: positions and numbers only). Callers that read the times
        anyway inline the same test (``pipeline.codecs.otlp.decode_traces``)."""
        skew, limit = self.max_skew_ns, self.limit_ns
        latest = self.latest(now_ns)
        for span in spans:
            end = span["end_time_unix_nano"]
            start = span["start_time_unix_nano"]
            if 0 < end <= latest and 0 < start <= end + skew and start <= limit:
                continue
            return self.explain(f"span {spans.index(span)}:", start, end, now_ns)
        return None

    def explain(self, where: str, start: int, end: int, now_ns: int) -> str:
        """Why (start, end) is out of bounds at ``now_ns``."""
        latest = self.latest(now_ns)
        if end <= 0 or start <= 0:
            return f"{where} start {start} / end {end} ns: times must be > 0"
        if end > self.limit_ns or start > self.limit_ns:
            return f"{where} start {start} / end {end} ns: beyond {self.limit_ns} (2^63 - 1 - the SLI window)"
        if end > latest:
            ahead_ms = (end - now_ns) // 1_000_000
            return (
                f"{where} ends {ahead_ms} ms ahead of the worker clock "
                f"(ingest.max_clock_skew_ms = {self.max_skew_ns // 1_000_000})"
            )
        return (
            f"{where} starts {(start - end) // 1_000_000} ms after it ends "
            f"(ingest.max_clock_skew_ms = {self.max_skew_ns // 1_000_000})"
        )
