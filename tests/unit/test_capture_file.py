"""The capture file (``tailsift capture``): an Avro container file of ``CapturedMessage`` records
that round-trips every field, is readable per partition, honours ``--max-bytes`` and refuses what
it is not. No Kafka here (the broker side: tests/integration/test_simulate_e2e.py)."""

from __future__ import annotations

import fastavro
import pytest

from pipeline import capture
from pipeline.capture import CaptureError, Message

SCHEMA_NAME = "dev.tailsift.v1.CapturedMessage"


def messages() -> list[Message]:
    out = []
    for p in (2, 0, 1):  # partitions in any order, each one's messages together
        for off in range(40):
            key = None if off == 3 else bytes([p, off]) * 8
            value = None if off == 5 else b"v%d-%d" % (p, off) * (off + 1)
            out.append(Message(p, 1000 + off, 1_700_000_000_000 + off * 10 + p, key, value))
    out.append(Message(3, 7, -1, b"k", b"no timestamp", 0))
    return out


def test_every_field_round_trips_in_order_and_per_partition(tmp_path):
    path = tmp_path / "c.avro"
    msgs = messages()
    stats = capture.write_file(path, "spans.raw", iter(msgs), 1 << 30, {"topic": "spans.raw", "range": "test"})
    assert stats.messages == len(msgs) and not stats.stopped_at_max_bytes
    assert sorted(capture.read_file(path), key=lambda m: (m.partition, m.offset)) == sorted(
        msgs, key=lambda m: (m.partition, m.offset)
    )
    for p in (0, 1, 2, 3):
        assert list(capture.read_file(path, p)) == [m for m in msgs if m.partition == p]
    assert capture.partitions_in_file(path) == [0, 1, 2, 3]
    assert stats.per_partition == {2: (1000, 1039), 0: (1000, 1039), 1: (1000, 1039), 3: (7, 7)}


def test_the_file_describes_itself_to_any_avro_reader(tmp_path):
    path = tmp_path / "c.avro"
    capture.write_file(path, "spans.raw", iter(messages()), 1 << 30, {"topic": "spans.raw", "range": "since 1h"})
    with open(path, "rb") as fh:
        reader = fastavro.reader(fh)  # no schema given: it is in the file
        assert reader.writer_schema["name"] == SCHEMA_NAME
        first = next(iter(reader))
    assert first["topic"] == "spans.raw" and first["timestamp_type"] == "CREATE_TIME"
    meta = capture.file_metadata(path)
    assert meta["topic"] == "spans.raw" and meta["range"] == "since 1h"
    assert meta["format_version"] == "1" and meta["layout"] == capture.LAYOUT


def test_max_bytes_stops_before_the_message_that_would_pass_it(tmp_path):
    path = tmp_path / "c.avro"
    msgs = [Message(0, i, 1, b"k" * 16, b"x" * 84) for i in range(100)]  # 100 + 32 counted each
    stats = capture.write_file(path, "t", iter(msgs), 132 * 10 + 131, {})
    assert stats.stopped_at_max_bytes and stats.messages == 10 and stats.bytes == 1320
    assert [m.offset for m in capture.read_file(path)] == list(range(10))


def test_nothing_written_leaves_no_file(tmp_path):
    path = tmp_path / "c.avro"
    stats = capture.write_file(path, "t", iter([]), 1 << 20, {})
    assert stats.messages == 0 and not path.exists() and not list(tmp_path.iterdir())


def test_interleaved_partitions_are_written_one_partition_per_block_in_offset_order(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "BLOCK_MESSAGES", 7)
    path = tmp_path / "c.avro"
    msgs = [Message(i % 3, 100 + i // 3, i, None, b"v%d" % i) for i in range(60)]  # round robin
    capture.write_file(path, "t", iter(msgs), 1 << 20, {})
    with open(path, "rb") as fh:
        blocks = [[r["partition"] for r in block] for block in fastavro.block_reader(fh)]
    assert all(len(set(b)) == 1 and len(b) <= 7 for b in blocks) and len(blocks) == 9
    for p in range(3):
        assert list(capture.read_file(path, p)) == [m for m in msgs if m.partition == p]


def test_other_files_are_refused_with_a_reason(tmp_path):
    not_avro = tmp_path / "x.avro"
    not_avro.write_bytes(b"hello")
    with pytest.raises(CaptureError, match="not an Avro container file"):
        list(capture.read_file(not_avro))
    other = tmp_path / "other.avro"
    with open(other, "wb") as fh:
        fastavro.writer(fh, {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "int"}]}, [{"a": 1}])
    with pytest.raises(CaptureError, match="not tailsift CapturedMessage"):
        list(capture.read_file(other))
    with pytest.raises(CaptureError, match="cannot read"):
        list(capture.read_file(tmp_path / "missing.avro"))


def test_a_file_from_another_writer_is_read_record_by_record(tmp_path):
    """Without the partition-blocks layout (any Avro writer, partitions interleaved) the per-partition
    read filters every record instead of skipping blocks."""
    path = tmp_path / "c.avro"
    records = [
        {"topic": "t", "partition": i % 2, "offset": i, "timestamp_ms": i, "key": None, "value": b"v"}
        for i in range(10)
    ]
    with open(path, "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(capture.avro.raw_schema(capture.SCHEMA)), records)
    assert [m.offset for m in capture.read_file(path, 1)] == [1, 3, 5, 7, 9]
    assert capture.partitions_in_file(path) == [0, 1]


def test_offset_ranges_and_durations_parse_or_say_why_not():
    assert capture.parse_offsets("0:100-200, 3:0-1") == {0: (100, 200), 3: (0, 1)}
    for bad, why in (("0:5-5", "greater than FROM"), ("0:1-2,0:3-4", "twice"), ("x", "not P:FROM-TO")):
        with pytest.raises(CaptureError, match=why):
            capture.parse_offsets(bad)
    assert capture.parse_duration_s("90s") == 90 and capture.parse_duration_s("1h") == 3600
    assert capture.parse_duration_s("1.5m") == 90 and capture.parse_duration_s("250ms") == 0.25
    with pytest.raises(CaptureError, match="not a duration"):
        capture.parse_duration_s("1 hour")
