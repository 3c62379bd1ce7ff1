"""``tailsift capture``: save a slice of the input topic to a local, self-describing file.

The file is an Avro Object Container File (fastavro): every record a ``CapturedMessage``
(``schemas/captured_message.v1.avsc``: topic, partition, offset, timestamp, key, value — no
headers), the writer schema embedded in the file header, deflate-compressed blocks, and the slice
described in the file metadata (``tailsift.capture.*``: topic, how the range was given, the
offsets per partition, when and with which tailsift version). Any Avro reader in any language
opens it without tailsift; a schema change is a new ``.vN`` that old files still resolve against.

What is read: the committed messages (``read_committed``) of every partition of the topic (or the
partitions ``--offsets`` names), one partition after the other in offset order — so the file's
content does not depend on fetch timing. The range is given by time (``--since`` or
``--from-ms``/``--to-ms``: the broker's time index, ``offsets_for_times``) or by offsets
(``P:FROM-TO``, FROM inclusive, TO exclusive). A partition is read up to the range's end or to
what is committed now, whichever comes first. ``--max-bytes`` bounds the keys and values written
(plus 32 bytes of framing counted per message): the capture stops before the message that would
pass it and says so; the file itself is smaller (compressed).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
import fastavro.write

from pipeline.codecs import avro

SCHEMA = "captured_message.v1"
FORMAT_VERSION = "1"
LAYOUT = "partition-blocks"  # blocks of one partition each, each partition's messages contiguous
MESSAGE_OVERHEAD = 32  # bytes counted per message besides key and value (partition, offset, times)
_TIMESTAMP_TYPES = ("NOT_AVAILABLE", "CREATE_TIME", "LOG_APPEND_TIME")


class CaptureError(Exception):
    """A capture that cannot be made (unknown topic, empty range, bad arguments)."""


@dataclass(slots=True, frozen=True)
class Message:
    """One captured message (what ``pipeline.job.Received`` needs, plus the timestamp)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    timestamp_type: int = 1  # 0 none, 1 CreateTime, 2 LogAppendTime (librdkafka's numbering)


@dataclass
class CaptureStats:
    messages: int = 0
    bytes: int = 0  # counted toward --max-bytes
    per_partition: dict[int, tuple[int, int]] = field(default_factory=dict)  # p → (first, last) offset
    stopped_at_max_bytes: bool = False


# ------------------------------------------------------------------ the file
def write_file(
    path: str | Path,
    topic: str,
    messages: Iterator[Message],
    max_bytes: int,
    meta: dict,
    stats: CaptureStats | None = None,
) -> CaptureStats:
    """Write ``messages`` (in the order given) to ``path``, at most ``max_bytes`` counted; the
    slice's description ``meta`` goes into the file metadata as ``tailsift.capture.*``. ``stats``
    (updated as it goes, for progress reports) is returned. No file is left when nothing was
    written. Each partition's messages must come together (as ``read_ranges`` yields them)."""
    stats = stats if stats is not None else CaptureStats()
    schema = avro.parsed_schema(SCHEMA)

    def records():
        for m in messages:
            size = len(m.key or b"") + len(m.value or b"") + MESSAGE_OVERHEAD
            if stats.bytes + size > max_bytes:
                stats.stopped_at_max_bytes = True
                return
            stats.bytes += size
            stats.messages += 1
            first = stats.per_partition.get(m.partition, (m.offset, m.offset))[0]
            stats.per_partition[m.partition] = (first, m.offset)
            yield {
                "topic": topic,
                "partition": m.partition,
                "offset": m.offset,
                "timestamp_ms": m.timestamp_ms,
                "timestamp_type": _TIMESTAMP_TYPES[
                    m.timestamp_type if 0 <= m.timestamp_ms and 0 <= m.timestamp_type < 3 else 0
                ],
                "key": m.key,
                "value": m.value,
            }

    metadata = {f"tailsift.capture.{k}": str(v) for k, v in meta.items()}
    metadata["tailsift.capture.format_version"] = FORMAT_VERSION
    # each block holds one partition's messages and partitions follow each other: a reader of one
    # partition skips the other blocks after decoding their first record (read_file)
    metadata["tailsift.capture.layout"] = LAYOUT
    tmp = Path(f"{path}.part")
    try:
        _write_blocks(tmp, schema, records(), metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if stats.messages == 0:
        tmp.unlink()
        return stats
    os.replace(tmp, path)
    return stats


def _write_blocks(tmp: Path, schema, records, metadata: dict) -> None:
    with open(tmp, "wb") as fh:
        writer = fastavro.write.Writer(fh, schema, codec="deflate", metadata=metadata)
        current, done = None, set()
        for record in records:
            if record["partition"] != current:
                if record["partition"] in done:
                    raise ValueError(f"partition {record['partition']} again after others: group messages by partition")
                done.add(current)
                writer.flush()  # ends the block: a new partition starts a new one
                current = record["partition"]
            writer.write(record)
        writer.flush()


def file_metadata(path: str | Path) -> dict[str, str]:
    """The ``tailsift.capture.*`` metadata of a capture file (keys without the prefix)."""
    with open(path, "rb") as fh:
        reader = fastavro.reader(fh)
        return {k.removeprefix("tailsift.capture."): v for k, v in reader.metadata.items() if k.startswith("tailsift.")}


def read_file(path: str | Path, partition: int | None = None) -> Iterator[Message]:
    """The messages of a capture file in file order (of one partition only, if given). Raises
    ``CaptureError`` for a file that is not a capture file."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the generator's finally
    except OSError as exc:
        raise CaptureError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        try:
            reader = fastavro.reader(fh)
        except Exception as exc:  # noqa: BLE001 - fastavro raises several types for a non-Avro file
            raise CaptureError(f"{path} is not an Avro container file ({type(exc).__name__})") from None
        name = reader.writer_schema.get("name", "") if isinstance(reader.writer_schema, dict) else ""
        if not name.endswith("CapturedMessage"):
            raise CaptureError(f"{path} holds {name or 'unknown'} records, not tailsift CapturedMessage")
        if partition is not None and reader.metadata.get("tailsift.capture.layout") == LAYOUT:
            fh.seek(0)
            yield from _one_partition(fh, partition)
            return
        for r in reader:
            if partition is None or r["partition"] == partition:
                yield _message(r)
    finally:
        fh.close()


def _one_partition(fh, partition: int) -> Iterator[Message]:
    """One partition's messages of a file in the ``partition-blocks`` layout: a block of another
    partition is skipped after its first record; the partition's run ends the read."""
    seen = False
    for block in fastavro.block_reader(fh):
        records = iter(block)
        first = next(records, None)
        if first is None:
            continue
        if first["partition"] != partition:
            if seen:
                return
            continue
        seen = True
        yield _message(first)
        for r in records:
            yield _message(r)


def _message(r: dict) -> Message:
    return Message(
        r["partition"],
        r["offset"],
        r["timestamp_ms"],
        r["key"],
        r["value"],
        _TIMESTAMP_TYPES.index(r["timestamp_type"]),
    )


def partitions_in_file(path: str | Path) -> list[int]:
    meta = file_metadata(path)
    if "partitions" in meta:
        return sorted(int(p) for p in json.loads(meta["partitions"]))
    return sorted({m.partition for m in read_file(path)})


# ------------------------------------------------------------------ arguments
_OFFSET_RANGE = re.compile(r"^(\d+):(\d+)-(\d+)$")


def parse_offsets(text: str) -> dict[int, tuple[int, int]]:
    """``P:FROM-TO,...`` → {partition: (from, to)}; FROM inclusive, TO exclusive."""
    ranges: dict[int, tuple[int, int]] = {}
    for part in text.split(","):
        m = _OFFSET_RANGE.match(part.strip())
        if not m:
            raise CaptureError(f"--offsets: {part.strip()!r} is not P:FROM-TO (e.g. 0:100-200)")
        p, lo, hi = (int(g) for g in m.groups())
        if hi <= lo:
            raise CaptureError(f"--offsets: {part.strip()}: TO must be greater than FROM (TO is exclusive)")
        if p in ranges:
            raise CaptureError(f"--offsets: partition {p} given twice")
        ranges[p] = (lo, hi)
    return ranges


def parse_duration_s(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text.strip())
    if not m:
        raise CaptureError(f"--since: {text!r} is not a duration (e.g. 90s, 15m, 1h, 2d)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3_600, "d": 86_400}[m.group(2)]


# ------------------------------------------------------------------ Kafka
def _consumer(client_conf: dict):
    from confluent_kafka import Consumer

    return Consumer(
        {
            **client_conf,
            "group.id": "tailsift-capture",  # required by librdkafka; never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 52_428_800,
        }
    )


def plan_ranges(
    client_conf: dict,
    topic: str,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    offsets: dict[int, tuple[int, int]] | None = None,
    timeout: float = 15.0,
) -> dict[int, tuple[int, int]]:
    """Per partition the offsets to read, [from, to), clipped to what the log holds now. Raises
    ``CaptureError`` for an unknown topic or a partition the topic does not have."""
    from confluent_kafka import KafkaException, TopicPartition

    c = _consumer(client_conf)
    try:
        try:
            meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            raise CaptureError(f"cannot reach Kafka at {client_conf.get('bootstrap.servers')}: {exc}") from None
        if meta is None or meta.error is not None or not meta.partitions:
            raise CaptureError(f"topic {topic!r} does not exist")
        parts = sorted(meta.partitions)
        if offsets is not None:
            missing = sorted(set(offsets) - set(parts))
            if missing:
                raise CaptureError(f"topic {topic!r} has partitions 0-{parts[-1]}, not {missing}")
            parts = sorted(offsets)
        ranges: dict[int, tuple[int, int]] = {}
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in parts}

        def at_time(ms: int) -> dict[int, int]:
            found = c.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=timeout)
            # -1: no message at or after that time → the end of the partition
            return {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition][1]) for tp in found}

        starts = at_time(from_ms) if from_ms is not None else {p: ends[p][0] for p in parts}
        stops = at_time(to_ms) if to_ms is not None else {p: ends[p][1] for p in parts}
        for p in parts:
            low, high = ends[p]
            lo, hi = offsets[p] if offsets is not None else (starts[p], stops[p])
            lo, hi = max(lo, low), min(hi, high)
            if hi > lo:
                ranges[p] = (lo, hi)
        return ranges
    finally:
        c.close()


def read_ranges(
    client_conf: dict,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    progress=None,
    timeout: float = 30.0,
) -> Iterator[Message]:
    """The committed messages of each range, partition by partition in offset order. Stops a
    partition at its range's end or at the end of what is committed (partition EOF)."""
    from confluent_kafka import KafkaError, TopicPartition

    c = _consumer(client_conf)
    try:
        for p in sorted(ranges):
            lo, hi = ranges[p]
            c.assign([TopicPartition(topic, p, lo)])
            deadline = time.monotonic() + timeout
            done = False
            while not done:
                batch = c.consume(500, timeout=0.5)
                if not batch and time.monotonic() > deadline:
                    raise CaptureError(f"{topic}[{p}]: no progress for {timeout:g} s (broker gone?)")
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            break
                        raise CaptureError(f"{topic}[{p}]: {err.str()}")
                    off = msg.offset()
                    if off >= hi:
                        done = True
                        break
                    deadline = time.monotonic() + timeout
                    ts_type, ts = msg.timestamp()
                    yield Message(p, off, ts if ts_type else -1, msg.key(), msg.value(), ts_type)
                    if off + 1 >= hi:
                        done = True
                        break
                if progress is not None:
                    progress(p)
            c.unassign()
    finally:
        c.close()


def capture(
    client_conf: dict,
    topic: str,
    out: str | Path,
    *,
    max_bytes: int,
    from_ms: int | None = None,
    to_ms: int | None = None,
    offsets: dict[int, tuple[int, int]] | None = None,
    range_text: str = "",
    log=None,
) -> CaptureStats:
    """Capture a slice of ``topic`` to ``out``. Raises ``CaptureError`` for an unknown topic or an
    empty range (no file is written then)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    ranges = plan_ranges(client_conf, topic, from_ms=from_ms, to_ms=to_ms, offsets=offsets)
    if not ranges:
        raise CaptureError(f"no messages of {topic!r} in the range {range_text or 'given'} (nothing written)")
    total = sum(hi - lo for lo, hi in ranges.values())
    log(f"capture: {topic}, {len(ranges)} partition(s), up to {total:,} messages ({range_text}) → {out}")
    stats = CaptureStats()
    last = [time.monotonic()]

    def progress(p: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            s = stats
            log(f"capture: {s.messages:,}/{total:,} messages, {s.bytes / 1e6:.1f} MB (partition {p})")

    meta = {
        "topic": topic,
        "range": range_text,
        "partitions": json.dumps(sorted(ranges)),
        "planned_offsets": json.dumps({str(p): list(r) for p, r in sorted(ranges.items())}),
        "created_by": "tailsift capture",
    }
    result = write_file(out, topic, read_ranges(client_conf, topic, ranges, progress), max_bytes, meta, stats)
    if result.messages == 0:
        raise CaptureError(f"no committed messages of {topic!r} in the range {range_text} (nothing written)")
    note = f"; stopped at --max-bytes {max_bytes:,}" if result.stopped_at_max_bytes else ""
    log(f"capture: wrote {result.messages:,} messages ({result.bytes / 1e6:.2f} MB counted) to {out}{note}")
    return result
