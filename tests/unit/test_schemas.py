import json
import re
from pathlib import Path

import fastavro
import pytest

from pipeline.codecs import avro

SCHEMAS = sorted(Path(avro.SCHEMA_DIR).glob("*.avsc"))


def test_the_expected_schemas_exist_with_versioned_names():
    names = {p.name for p in SCHEMAS}
    assert {
        "span_batch.v1.avsc",
        "span_detail.v1.avsc",
        "resource.v1.avsc",
        "kept_trace.v1.avsc",
        "sli_window.v1.avsc",
        "dead_letter.v1.avsc",
    } <= names
    assert all(re.fullmatch(r"[a-z_]+\.v\d+\.avsc", n) for n in names)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_schema_parses_and_documents_itself(path):
    schema = json.loads(path.read_text())
    fastavro.parse_schema(schema)
    assert schema["namespace"] == "dev.tailsift.v1" and schema.get("doc")


def _fields(record):
    return {f["name"] for f in record["fields"]}


def test_kept_trace_span_is_the_batch_span_with_its_detail_inlined():
    batch_span = avro.raw_schema("span_batch.v1")["fields"][2]["type"]["items"]
    (batches,) = [f for f in avro.raw_schema("kept_trace.v1")["fields"] if f["name"] == "batches"]
    kept_span = batches["type"]["items"]["fields"][2]["type"]["items"]
    detail = avro.raw_schema("span_detail.v1")
    assert _fields(kept_span) == (_fields(batch_span) - {"detail"}) | _fields(detail)


def test_batch_round_trip_and_lazy_detail():
    detail = {
        "status_message": "boom",
        "attributes": {"k": "v", "n": 3, "f": 1.5, "b": True, "l": ["a", 1]},
        "events": [{"time_unix_nano": 5, "name": "exception", "attributes": {"exception.type": "E"}}],
        "links": [{"trace_id": b"\x01" * 16, "span_id": b"\x02" * 8, "trace_state": "", "attributes": {}}],
    }
    batch = {
        "trace_id": b"\x03" * 16,
        "service": "svc",
        "resource": {"service.name": "svc"},
        "scope_name": "s",
        "spans": [
            {
                "span_id": b"\x04" * 8,
                "parent_span_id": None,
                "name": "op",
                "kind": "CLIENT",
                "start_time_unix_nano": 1,
                "end_time_unix_nano": 2,
                "status_code": "ERROR",
                "trace_state": "ot=th:8",
                "detail": avro.encode_detail(detail),
            }
        ],
    }
    back = avro.decode_batch(avro.encode_span_batch(batch))
    assert avro.decode_resource(back.pop("resource")) == batch.pop("resource")  # left encoded at ingest
    assert back == batch
    assert avro.decode_detail(back["spans"][0]["detail"]) == detail
    assert avro.decode_detail(b"") == avro.EMPTY_DETAIL


@pytest.mark.parametrize(
    "name, record",
    [
        (
            avro.SLI_WINDOW,
            {
                "service": "s",
                "window_start_unix_nano": 0,
                "window_end_unix_nano": 1,
                "span_count": 1,
                "error_count": 0,
                "latency_ms": {k: 1.0 for k in ("min", "max", "sum", "p50", "p90", "p95", "p99")},
                "sketch": {"relative_accuracy": 0.01, "zero_count": 0.0, "bin_offset": 3, "bin_counts": [1.0]},
                "emitted_at_unix_nano": 2,
            },
        ),
        (
            avro.DEAD_LETTER,
            {
                "source_topic": "t",
                "partition": 0,
                "offset": 1,
                "reason": "r",
                "detail": "d",
                "value_size": 3,
                "value_sha256": "ab",
                "received_at_unix_nano": 4,
            },
        ),
    ],
)
def test_output_records_round_trip_with_defaults(name, record):
    back = avro.decode(name, avro.encode(name, record))
    assert {k: back[k] for k in record} == record


def test_producers_may_omit_bytes_fields_and_give_the_resource_as_a_dict():
    minimal = {
        "trace_id": b"\x05" * 16,
        "service": "s",
        "spans": [
            {
                "span_id": b"\x06" * 8,
                "name": "n",
                "kind": "SERVER",
                "start_time_unix_nano": 1,
                "end_time_unix_nano": 2,
                "status_code": "OK",
            }
        ],
    }
    back = avro.decode_batch(avro.encode_span_batch(minimal))
    assert back["resource"] == b"" and back["spans"][0]["detail"] == b""
    assert avro.decode_detail(b"") == avro.EMPTY_DETAIL and avro.decode_resource(b"") == {}
    with_resource = avro.decode_batch(avro.encode_span_batch({**minimal, "resource": {"service.name": "s"}}))
    assert avro.decode_resource(with_resource["resource"]) == {"service.name": "s"}
