"""No output can fail a transaction for its size: a kept trace larger than one record is split into
parts a consumer can reassemble; a span that cannot fit alone is dead-lettered with a reason.

Before: a kept 5,000-span trace became one ~1.3 MB record; the broker refused it
(MSG_SIZE_TOO_LARGE), the transaction failed, the worker exited, restarted, replayed the same trace
and failed again — a crash loop."""

import os

from pipeline import config
from pipeline.codecs import avro, otlp
from pipeline.job import MAX_RECORD_BYTES, Job, Received
from tests.spans import batch_bytes, span

MS = 1_000_000
NOW = 10_000 * MS  # the job clock: after every span's end (it refuses spans from its future)


def make_job(emit="avro", **ingest):
    cfg = config.parse(
        {
            "ingest": ingest,
            "privacy": {"enabled": False},
            "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0, "max_spans_per_trace": 100_000},
            "emit": {"format": emit},
            "sampling": {"policies": [{"name": "all", "type": "always_sample"}]},
        }
    )
    return Job(cfg, worker_id="t")


def big_trace(tid, spans_per_message=500, messages=10, attr_bytes=200):
    attrs = {"payload": "x" * attr_bytes, "user.id": "u-1"}
    out = []
    for m in range(messages):
        spans = [
            span(1 + i * MS, i * MS + 5 * MS, parent=None if (m, i) == (0, 0) else b"p" * 8)
            for i in range(spans_per_message)
        ]
        out.append(Received(0, m, tid, batch_bytes(tid, f"svc{m}", spans, attributes=attrs), m))
    return out


def kept(out):
    return [r for r in out.records if r.topic == "traces.kept"]


def test_a_5000_span_kept_trace_leaves_in_parts_that_each_fit_and_reassemble():
    job = make_job()
    tid = os.urandom(16)
    msgs = big_trace(tid)
    job.ingest(msgs, now_ns=NOW)
    out = job.collect(NOW + 2_000 * MS)
    parts = kept(out)
    assert len(parts) >= 2 and all(len(r.value) <= MAX_RECORD_BYTES for r in parts)
    decoded = [avro.decode(avro.KEPT_TRACE, r.value) for r in parts]
    assert sorted(d["part"] for d in decoded) == list(range(len(parts)))
    assert {d["parts"] for d in decoded} == {len(parts)}
    span_ids = [s["span_id"] for d in decoded for b in d["batches"] for s in b["spans"]]
    assert len(span_ids) == 5_000 and len(set(span_ids)) == 5_000  # every span exactly once
    assert sum(d["span_count"] for d in decoded) == 5_000
    # the input offsets commit only once every part is written
    job.delivered([r for r in out.records if r is not parts[-1]])
    assert job.ready() == []
    job.delivered([parts[-1]])
    assert [h.offset for h in job.ready()] == list(range(10))


def test_a_span_too_large_for_any_record_is_dead_lettered_and_the_rest_kept():
    # ingest.max_span_bytes (512 KiB by default) refuses such a span at ingest already
    # (tests/unit/test_hostile_kinds.py); raised, the kept path must still cope with it
    job = make_job(max_span_bytes=8 << 20)
    tid = os.urandom(16)
    huge = Received(0, 0, tid, batch_bytes(tid, "svc", [span(1, parent=None)], attributes={"blob": "y" * (2 << 20)}), 0)
    small = Received(0, 1, tid, batch_bytes(tid, "svc", [span(1), span(1)]), 1)
    job.ingest([huge, small], now_ns=NOW)
    out = job.collect(NOW + 2_000 * MS)
    (part,) = kept(out)
    assert avro.decode(avro.KEPT_TRACE, part.value)["span_count"] == 2
    (dl,) = [avro.decode(avro.DEAD_LETTER, r.value) for r in out.records if r.topic == "spans.deadletter"]
    assert dl["reason"] == "span_too_large" and dl["offset"] == 0
    assert all(len(r.value) <= MAX_RECORD_BYTES for r in out.records)
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [0, 1]


def test_otlp_output_splits_into_several_requests_of_the_same_trace():
    job = make_job(emit="otlp_proto")
    tid = os.urandom(16)
    job.ingest(big_trace(tid), now_ns=NOW)
    parts = kept(job.collect(NOW + 2_000 * MS))
    assert len(parts) >= 2 and all(len(r.value) <= MAX_RECORD_BYTES and r.key == tid for r in parts)
    traces = [otlp.decode_traces(r.value) for r in parts]
    assert all(list(t) == [tid] for t in traces)
    assert sum(len(t[tid].spans) for t in traces) == 5_000


def test_a_misplaced_message_too_large_to_rekey_is_buffered_where_it_arrived():
    """A re-keyed copy is an output too: one larger than a record may be would fail every
    transaction (a crash loop on one message). It is buffered where it arrived instead."""
    job = make_job()
    job.input_partitions = 12
    job.max_record_bytes = 50_000
    tid = os.urandom(16)
    (big,) = big_trace(tid, spans_per_message=400, messages=1)
    assert len(big.value) > job.max_record_bytes
    job.ingest([Received(0, 0, b"not-the-trace-id", big.value, 0)], now_ns=NOW)
    assert job.assembler.buffered_spans == 400
    out = job.collect(NOW + 2_000 * MS)
    assert [r for r in out.records if r.topic == "spans.raw"] == []
    assert len(kept(out)) >= 2 and all(len(r.value) <= job.max_record_bytes for r in kept(out))
