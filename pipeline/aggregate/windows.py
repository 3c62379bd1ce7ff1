"""Merged SLI windows as the aggregation stage keeps them: pure, synchronous, no Faust.

An open window is one (service, operation, kind, status, start, end) of one ``sli_windows``
partition, holding the exact merge of every partial read so far: counts and sums add, min/max
combine and the DDSketch bins add bin for bin (same relative accuracy ⇒ same key mapping, so the
merged bins are exactly those of one sketch over all the spans — no re-mapping through values).

Each open window remembers the source offsets it covers: ``first_offset`` names its emission (the
``sli_merged`` record key), ``last_offset`` makes a re-read partial a no-op. Both make a replay
after a crash idempotent, whatever part of the last step had reached the broker.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from operators.sli import sketch_from_record

SEP = "\x1f"  # ASCII unit separator: never in a sanitized service or operation name
_HEADER = struct.Struct(">iqqq")  # partition, first offset, last offset, window end (ns)
AGGREGATE_WORKER = "aggregate"


class IncompatiblePartial(ValueError):
    """A partial that cannot merge exactly into a window (another sketch accuracy)."""


def window_key(record: dict) -> bytes:
    """The merge key of a ``SliWindow`` record (also the prefix of its ``sli_merged`` key)."""
    return SEP.join(
        (
            record["service"],
            record["operation"],
            record["span_kind"],
            record["status"],
            str(record["window_start_unix_nano"]),
            str(record["window_end_unix_nano"]),
        )
    ).encode()


def emission_key(key: bytes, partition: int, first_offset: int) -> bytes:
    """``sli_merged`` record key: the window and the first partial it covers. Deterministic, so
    the same emission replayed after a crash has the same key (and on-time / late emissions of one
    window differ)."""
    return key + f"{SEP}{partition}:{first_offset}".encode()


def key_of_emission(emission: bytes) -> bytes:
    return emission.rsplit(SEP.encode(), 1)[0]


@dataclass
class OpenWindow:
    partition: int
    first_offset: int
    last_offset: int
    record: dict  # a SliWindow record: the merge so far

    @property
    def end_ns(self) -> int:
        return self.record["window_end_unix_nano"]

    def pack(self, encode) -> bytes:
        """Raw table value: a fixed header and the Avro ``SliWindow`` (no JSON per record)."""
        return _HEADER.pack(self.partition, self.first_offset, self.last_offset, self.end_ns) + encode(self.record)

    @classmethod
    def unpack(cls, value: bytes, decode) -> OpenWindow:
        partition, first, last, _end = _HEADER.unpack_from(value)
        return cls(partition, first, last, decode(value[_HEADER.size :]))


def peek_end(value: bytes) -> tuple[int, int]:
    """(partition, window end) of a packed open window (or closed marker) without decoding it."""
    partition, _first, _last, end = _HEADER.unpack_from(value)
    return partition, end


def closed_marker(window: OpenWindow) -> bytes:
    """What replaces an emitted window in the table: its header alone. It keeps ``last_offset``
    after the window is gone, so a partial re-read after a crash (its offset not yet committed,
    though the window that merged it was) is recognised instead of counted again as a late one."""
    return _HEADER.pack(window.partition, window.first_offset, window.last_offset, window.end_ns)


def is_closed(value: bytes) -> bool:
    return len(value) == _HEADER.size


def closed_through(value: bytes) -> int:
    """The highest source offset a closed marker's window merged."""
    return _HEADER.unpack_from(value)[2]


def start_window(record: dict, partition: int, offset: int) -> OpenWindow:
    merged = dict(record)
    merged["sketch"] = dict(record["sketch"])
    merged["partitions"] = sorted(set(record.get("partitions") or ()))
    merged["latency_ms"] = dict(record["latency_ms"])
    return OpenWindow(partition, offset, offset, merged)


def merge_sketch_bins(into: dict, other: dict) -> None:
    """Add ``other``'s ``LatencySketch`` bins to ``into``'s, aligned by bin key (exact)."""
    if into["relative_accuracy"] != other["relative_accuracy"]:
        raise IncompatiblePartial(
            f"relative_accuracy {other['relative_accuracy']} != {into['relative_accuracy']}: bins do not align"
        )
    into["zero_count"] += other["zero_count"]
    a, b = into["bin_counts"], other["bin_counts"]
    if not b:
        return
    if not a:
        into["bin_offset"], into["bin_counts"] = other["bin_offset"], list(b)
        return
    lo = min(into["bin_offset"], other["bin_offset"])
    hi = max(into["bin_offset"] + len(a), other["bin_offset"] + len(b))
    bins = [0.0] * (hi - lo)
    for offset, counts in ((into["bin_offset"], a), (other["bin_offset"], b)):
        base = offset - lo
        for i, c in enumerate(counts):
            bins[base + i] += c
    into["bin_offset"], into["bin_counts"] = lo, bins


def merge_partial(window: OpenWindow, record: dict, offset: int) -> bool:
    """Merge one partial read at ``offset``; False (nothing changed) when already merged."""
    if offset <= window.last_offset:
        return False
    m = window.record
    merge_sketch_bins(m["sketch"], record["sketch"])
    if record["span_count"]:
        lat, other = m["latency_ms"], record["latency_ms"]
        if m["span_count"]:
            lat["min"] = min(lat["min"], other["min"])
            lat["max"] = max(lat["max"], other["max"])
        else:
            lat["min"], lat["max"] = other["min"], other["max"]
        lat["sum"] += other["sum"]
    m["span_count"] += record["span_count"]
    m["error_count"] += record["error_count"]
    m["root_count"] += record["root_count"]
    m["partitions"] = sorted(set(m["partitions"]).union(record.get("partitions") or ()))
    window.last_offset = offset
    return True


def final_record(window: OpenWindow, emitted_at_ns: int) -> dict:
    """The ``sli_merged`` value: a ``SliWindow`` (same schema as the partials) with quantiles
    recomputed from the merged bins and ``worker = "aggregate"``."""
    m = dict(window.record)
    lat = dict(m["latency_ms"])
    if m["span_count"]:
        sketch = sketch_from_record(m["sketch"])
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
            v = sketch.get_quantile_value(q)
            lat[name] = 0.0 if v is None else min(max(v, lat["min"]), lat["max"])
    m["latency_ms"] = lat
    m["worker"] = AGGREGATE_WORKER
    m["emitted_at_unix_nano"] = emitted_at_ns
    return m


def due(open_ends: Iterable[tuple[bytes, int]], view_ns: int, grace_ns: int) -> list[bytes]:
    """Keys of windows complete at event time ``view_ns``: end + grace ≤ view, oldest first."""
    horizon = view_ns - grace_ns
    return [k for k, end in sorted(open_ends, key=lambda kv: (kv[1], kv[0])) if end <= horizon]


def over_bound(open_ends: Iterable[tuple[bytes, int]], limit: int) -> list[bytes]:
    """The memory bound's policy: beyond ``limit`` open windows, the oldest (smallest end) are
    closed early — emitted as they are; their later partials open and emit further records."""
    ends = sorted(open_ends, key=lambda kv: (kv[1], kv[0]))
    return [k for k, _ in ends[: max(0, len(ends) - limit)]]
