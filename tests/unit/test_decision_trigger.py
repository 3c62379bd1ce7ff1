"""Each decision record names its decision point (``trigger``), the same label
``tailsift_decision_points_total`` counts it under; a late span's rewrite of a kept trace's record,
and a record restored from the log, keep it. Before, the record had no trigger: the chaos suite
could not tell a drop at the buffer bound (the stated fallback) from any other (issue 13)."""

from __future__ import annotations

from collections import Counter

from prometheus_client import REGISTRY

from pipeline.codecs import avro
from pipeline.job import Received
from tests.spans import batch_bytes, span
from tests.support import jobs
from tests.support.jobs import MS, S

TRIGGERS = ("decision_wait", "root_quiet", "span_limit", "backlog_read", "backlog_bound", "backlog_limit")


def points() -> Counter:
    return Counter(
        {t: REGISTRY.get_sample_value("tailsift_decision_points_total", {"trigger": t}) or 0.0 for t in TRIGGERS}
    )


def decisions(out) -> list[dict]:
    return [avro.decode(avro.TRACE_DECISION, r.value) for r in jobs.records(out, "traces.decisions")]


def test_each_record_names_the_trigger_its_metric_counts():
    job = jobs.make_job(
        sampling={"policies": [{"name": "errors", "type": "status_code"}]},
        assemble={"max_spans_per_trace": 3, "root_quiet_gap_ms": 200},
    )
    before = points()
    rooted, waiting, big = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    job.ingest(
        [
            Received(0, 0, rooted, batch_bytes(rooted, "svc", [span(1, MS, parent=None)])),  # its root: quiet gap
            Received(0, 1, waiting, batch_bytes(waiting, "svc", [span(1, MS, "ERROR")])),  # no root: the wait
            Received(0, 2, big, batch_bytes(big, "svc", [span(1, MS) for _ in range(4)])),  # over the span limit
        ],
        now_ns=0,
    )
    out = job.decide_due(10 * S)
    got = {d["trace_id"]: d["trigger"] for d in decisions(out)}
    assert got == {rooted: "root_quiet", waiting: "decision_wait", big: "span_limit"}
    counted = points() - before
    assert counted == Counter(got.values())


def test_a_late_spans_rewrite_and_a_restored_record_keep_the_trigger():
    """The compacted log keeps a kept trace's latest record, the late span's rewrite: it must not
    lose the trigger. A worker restoring the partition remembers it for its own rewrites; a record
    written before the field existed restores with "" (not known)."""
    job = jobs.make_job(sampling={"policies": [{"name": "all", "type": "always_sample"}]})
    tid = b"\x04" * 16
    job.ingest([Received(0, 0, tid, batch_bytes(tid, "svc", [span(1, MS)]))], now_ns=0)
    first = decisions(job.decide_due(10 * S))
    job.ingest([Received(0, 1, tid, batch_bytes(tid, "svc", [span(1, MS)]))], now_ns=11 * S)
    late = decisions(job.decide_due(12 * S))
    assert [(d["emitted_offsets"], d["trigger"]) for d in first + late] == [
        ([0], "decision_wait"),
        ([0, 1], "decision_wait"),
    ]

    for stored, expected in ((late[0], "decision_wait"), ({k: v for k, v in late[0].items() if k != "trigger"}, "")):
        fresh = jobs.make_job(sampling={"policies": [{"name": "all", "type": "always_sample"}]})
        restored = avro.decode(avro.TRACE_DECISION, _written(stored))
        assert restored["trigger"] == expected
        assert fresh.restore(0, [restored]) == 1
        fresh.ingest([Received(0, 2, tid, batch_bytes(tid, "svc", [span(1, MS)]))], now_ns=0)
        (rewrite,) = decisions(fresh.decide_due(S))
        assert (rewrite["emitted_offsets"], rewrite["trigger"]) == ([0, 1, 2], expected)


def _written(record: dict) -> bytes:
    """``record`` as a writer of its version wrote it (without ``trigger``: the schema before it)."""
    import io

    import fastavro

    schema = avro.raw_schema(avro.TRACE_DECISION)
    if "trigger" not in record:
        schema = {**schema, "fields": [f for f in schema["fields"] if f["name"] != "trigger"]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()
