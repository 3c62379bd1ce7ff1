"""``tailsift capture``: save a slice of the input topic to a local, self-describing file.

The file is an Avro Object Container File (fastavro): every record a ``CapturedMessage``
(``schemas/captured_message.v1.avsc``: topic, partition, offset, timestamp, key, value — no
headers), the writer schema embedded in the file header, deflate-compressed blocks, and the slice
described in the file metadata (``tailsift.capture.*``: topic, how the range was given, the
planned offsets per partition, format version and block layout). Any Avro reader in any language
opens it without tailsift; a schema change is a new ``.vN`` that old files still resolve against.
Every block holds messages of one partition (in offset order), so a reader of one partition skips
the others' blocks after one record each.

What is read: the committed messages (``read_committed``) of every partition of the topic (or the
partitions ``--offsets`` names), all partitions together but kept within a second of message time
of each other, so that a capture cut short is a time prefix of every partition (the interleaving
of partitions in the file depends on fetch timing; a replay merges the partitions by timestamp,
so it does not matter). The range is given by time (``--since`` or
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
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
import fastavro.write

from pipeline.codecs import avro

SCHEMA = "captured_message.v1"
FORMAT_VERSION = "1"
LAYOUT = "partition-blocks"  # every block holds messages of one partition only
ALIGN_MS = 1_000  # partitions are read within this much message time of each other
BLOCK_MESSAGES = 500  # messages of one partition buffered before they are written as one block
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
    written. Each partition's messages must come in offset order (as ``read_ranges`` yields them)."""
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
    """One partition's messages per block (up to ``BLOCK_MESSAGES``), partitions interleaved as
    they arrive; a partition's messages stay in offset order."""
    with open(tmp, "wb") as fh:
        writer = fastavro.write.Writer(fh, schema, codec="deflate", metadata=metadata)
        pending: dict[int, list[dict]] = {}

        def block(p: int) -> None:
            for record in pending.pop(p):
                writer.write(record)
            writer.flush()  # ends the block

        for record in records:
            rows = pending.setdefault(record["partition"], [])
            rows.append(record)
            if len(rows) >= BLOCK_MESSAGES:
                block(record["partition"])
        for p in sorted(pending):
            block(p)


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
    partition is skipped after its first record."""
    for block in fastavro.block_reader(fh):
        records = iter(block)
        first = next(records, None)
        if first is None or first["partition"] != partition:
            continue
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
def _address(kafka) -> str:
    return kafka if isinstance(kafka, str) else kafka.bootstrap_servers


def _consumer(kafka):
    from confluent_kafka import Consumer

    from pipeline.kafka import clients

    return Consumer(
        {
            **clients.connection(kafka),
            "group.id": "tailsift-capture",  # required by librdkafka; never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 52_428_800,
        }
    )


def plan_ranges(
    kafka,  # the config's kafka: section (address and security), or an address
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

    c = _consumer(kafka)
    try:
        try:
            meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            raise CaptureError(f"cannot reach Kafka at {_address(kafka)}: {exc}") from None
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
    kafka,  # the config's kafka: section (address and security), or an address
    topic: str,
    ranges: dict[int, tuple[int, int]],
    progress=None,
    timeout: float = 30.0,
    align_ms: int = ALIGN_MS,
) -> Iterator[Message]:
    """The committed messages of each range, each partition in offset order, all partitions read
    together and handed out within ``align_ms`` of message time of each other: a message waits
    while a partition still being read is further behind, and a partition that runs ahead is
    paused (so what waits is at most a fetch per partition). A capture cut short by
    ``--max-bytes`` is thus a time prefix of every partition, not the whole of some and none of
    the rest. A partition ends at its range's end or at the end of what is committed (EOF)."""
    from confluent_kafka import KafkaError, TopicPartition

    c = _consumer(kafka)
    active = set(ranges)
    next_offset = {p: lo for p, (lo, _) in ranges.items()}
    newest = dict.fromkeys(ranges, -1)  # newest timestamp fetched; -1: none yet, the others wait
    held: dict[int, deque[Message]] = {p: deque() for p in ranges}
    paused: set[int] = set()

    def finish(p: int) -> None:
        active.discard(p)
        paused.discard(p)
        c.pause([TopicPartition(topic, p)])  # fetch nothing more of it

    try:
        c.assign([TopicPartition(topic, p, lo) for p, (lo, _) in sorted(ranges.items())])
        deadline = time.monotonic() + timeout
        while active:
            batch = c.consume(500, timeout=0.5)
            if not batch and time.monotonic() > deadline:
                raise CaptureError(
                    f"{topic}: no progress for {timeout:g} s on partitions {sorted(active)} (broker gone?)"
                )
            for msg in batch:
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p in active:
                            finish(p)
                        continue
                    raise CaptureError(f"{topic}[{p}]: {err.str()}")
                off = msg.offset()
                if p not in active or off < next_offset[p]:  # done, or fetched again after a pause
                    continue
                if off >= ranges[p][1]:
                    finish(p)
                    continue
                deadline = time.monotonic() + timeout
                next_offset[p] = off + 1
                ts_type, ts = msg.timestamp()
                if ts_type:
                    newest[p] = max(newest[p], ts)
                held[p].append(Message(p, off, ts if ts_type else -1, msg.key(), msg.value(), ts_type))
                if off + 1 >= ranges[p][1]:
                    finish(p)
            limit = min((newest[p] for p in active), default=1 << 62) + align_ms
            yield from _release(held, limit)
            ahead = {p for p in active if newest[p] > limit}
            if ahead - paused:
                c.pause([TopicPartition(topic, p) for p in sorted(ahead - paused)])
            if paused - ahead:
                c.resume([TopicPartition(topic, p) for p in sorted(paused - ahead)])
            paused = ahead
            if progress is not None:
                progress(len(ranges) - len(active))
        yield from _release(held, 1 << 63)
    finally:
        c.close()


def _release(held: dict[int, deque[Message]], limit: int) -> Iterator[Message]:
    """The held messages with timestamps up to ``limit``, in (timestamp, partition) order — each
    partition's in offset order — so a capture stopped at any point is a time prefix."""
    while True:
        best, best_key = None, None
        for p, queue in held.items():
            if queue and queue[0].timestamp_ms <= limit:
                key = (queue[0].timestamp_ms, p)
                if best_key is None or key < best_key:
                    best, best_key = p, key
        if best is None:
            return
        yield held[best].popleft()


def capture(
    kafka,  # the config's kafka: section (address and security), or an address
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
    ranges = plan_ranges(kafka, topic, from_ms=from_ms, to_ms=to_ms, offsets=offsets)
    if not ranges:
        raise CaptureError(f"no messages of {topic!r} in the range {range_text or 'given'} (nothing written)")
    total = sum(hi - lo for lo, hi in ranges.values())
    log(f"capture: {topic}, {len(ranges)} partition(s), up to {total:,} messages ({range_text}) → {out}")
    stats = CaptureStats()
    last = [time.monotonic()]

    def progress(finished: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            s = stats
            log(
                f"capture: {s.messages:,}/{total:,} messages, {s.bytes / 1e6:.1f} MB, "
                f"{finished}/{len(ranges)} partitions done"
            )

    meta = {
        "topic": topic,
        "range": range_text,
        "partitions": json.dumps(sorted(ranges)),
        "planned_offsets": json.dumps({str(p): list(r) for p, r in sorted(ranges.items())}),
        "created_by": "tailsift capture",
    }
    result = write_file(out, topic, read_ranges(kafka, topic, ranges, progress), max_bytes, meta, stats)
    if result.messages == 0:
        raise CaptureError(f"no committed messages of {topic!r} in the range {range_text} (nothing written)")
    note = f"; stopped at --max-bytes {max_bytes:,}" if result.stopped_at_max_bytes else ""
    log(f"capture: wrote {result.messages:,} messages ({result.bytes / 1e6:.2f} MB counted) to {out}{note}")
    return result
