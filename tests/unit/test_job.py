"""The job core without Kafka: what it emits, and when inputs become committable."""

import os

from pipeline import config
from pipeline.codecs import avro
from pipeline.job import Job, Received
from tests.spans import batch_bytes, span
from tests.support import jobs
from tests.support.jobs import MS, S
from tests.support.jobs import received as msg
from tests.support.jobs import records as by_topic


def make_job(**sampling):
    return jobs.make_job(
        job={"processing_guarantee": "at_least_once"},  # window-close semantics; exactly_once: test_exactly_once_job
        sampling=sampling
        or {
            "policies": [
                {"name": "errors", "type": "status_code"},
                {"name": "slow", "type": "latency", "threshold_ms": 500},
            ]
        },
    )


def test_error_trace_is_kept_whole_and_ok_trace_dropped():
    job = make_job()
    err, ok = os.urandom(16), os.urandom(16)
    job.ingest(
        [
            msg(0, err, "front", [span(1, 10 * MS, parent=None)]),
            msg(1, ok, "front", [span(1, 10 * MS, parent=None)]),
            msg(2, err, "db", [span(1 * MS, 2 * MS, "ERROR")], attributes={"user.email": "x@y.z"}),
        ],
        now_ns=0,
    )
    assert by_topic(job.collect(999 * MS), "traces.kept") == []
    out = job.collect(1000 * MS)
    (kept,) = by_topic(out, "traces.kept")
    assert kept.key == err and out.kept_traces == 1 and out.dropped_traces == 1
    trace = avro.decode(avro.KEPT_TRACE, kept.value)
    assert trace["span_count"] == 2 and trace["policy"] == "errors" and trace["adjusted_count"] == 1.0
    assert sorted(b["service"] for b in trace["batches"]) == ["db", "front"]
    for b in trace["batches"]:
        for s in b["spans"]:
            assert s["attributes"]["sampling.policy"] == "errors"
            assert s["attributes"]["sampling.adjusted_count"] == 1.0
    db = next(b for b in trace["batches"] if b["service"] == "db")
    assert db["spans"][0]["attributes"]["user.email"] == "x@y.z"


def test_offsets_become_ready_only_after_outputs_are_delivered_and_in_order():
    job = make_job()
    err, ok = os.urandom(16), os.urandom(16)
    job.ingest(
        [msg(0, err, "a", [span(1, 1 * MS, "ERROR", parent=None)]), msg(1, ok, "a", [span(1, 1 * MS, parent=None)])],
        now_ns=0,
    )
    out = job.collect(2 * S)  # trace decisions; SLI window [0,10s) still open
    assert job.ready() == []  # kept trace not yet acknowledged; window still holds both
    job.delivered(by_topic(out, "traces.kept"))
    assert job.ready() == []  # the SLI window still holds both messages
    out2 = job.collect(11 * S)
    windows = by_topic(out2, "sli.windows")  # one per (service, operation, kind, status)
    assert job.ready() == []
    job.delivered(out2.records)
    assert [h.offset for h in job.ready()] == [0, 1]
    sli = sorted((avro.decode(avro.SLI_WINDOW, w.value) for w in windows), key=lambda r: r["status"])
    assert [(r["service"], r["status"], r["span_count"], r["error_count"], r["root_count"]) for r in sli] == [
        ("a", "ERROR", 1, 1, 1),
        ("a", "UNSET", 1, 0, 1),
    ]


def test_malformed_message_goes_to_dead_letter_without_payload_and_stream_continues():
    job = make_job()
    secret = b"jane.doe@example.com card 4111111111111111"
    job.ingest(
        [
            Received(0, 0, b"k", secret, 0),
            Received(0, 1, b"k", None, 1),
            msg(2, os.urandom(16), "a", [span(1, 1 * MS, "ERROR", parent=None)]),
        ],
        now_ns=0,
    )
    out = job.collect(2 * S)
    dls = by_topic(out, "spans.deadletter")
    assert len(dls) == 2 and len(by_topic(out, "traces.kept")) == 1
    records = [avro.decode(avro.DEAD_LETTER, r.value) for r in dls]
    assert [r["reason"] for r in records] == ["decode_error", "empty_value"]
    assert records[0]["offset"] == 0 and records[0]["value_size"] == len(secret)
    for r in dls:
        assert b"jane.doe" not in r.value and b"4111" not in r.value
    job.delivered(dls)
    assert [h.offset for h in job.ready()] == [0, 1]


def test_unkeyed_message_is_republished_keyed_by_trace_id():
    job = make_job()
    tid = os.urandom(16)
    job.ingest([msg(0, tid, "a", [span(start=1)], key=b"")], now_ns=0)
    (rekey,) = job.collect(0).records
    assert rekey.topic == "spans.raw" and rekey.key == tid
    assert avro.decode_batch(rekey.value)["trace_id"] == tid


def test_rekey_false_buffers_an_avro_message_keyed_otherwise_where_it_arrives():
    """Old code: `ingest.rekey: false` was ignored for Avro input (observed: the message was
    re-published to spans.raw keyed by trace ID and never buffered here). Now it is buffered
    and decided where it arrived, as for OTLP input."""
    cfg = config.parse(
        {
            "job": {"processing_guarantee": "at_least_once"},
            "ingest": {"rekey": False},
            "privacy": {"enabled": False},
            "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0},
            "sampling": {"policies": [{"name": "errors", "type": "status_code"}]},
        }
    )
    job = Job(cfg, worker_id="test")
    tid = os.urandom(16)
    job.ingest([msg(0, tid, "a", [span(1, MS, "ERROR")], key=b"some-other-key")], now_ns=0)
    assert [b.trace_id for b in job.assembler] == [tid]
    out = job.collect(2 * S)
    assert [(r.topic, r.key) for r in out.records if r.topic in ("spans.raw", "traces.kept")] == [("traces.kept", tid)]


def test_late_spans_follow_the_remembered_decision():
    job = make_job()
    err, ok = os.urandom(16), os.urandom(16)
    job.ingest(
        [msg(0, err, "a", [span(1, 1 * MS, "ERROR", parent=None)]), msg(1, ok, "a", [span(1, 1 * MS, parent=None)])],
        now_ns=0,
    )
    job.collect(2 * S)
    job.ingest([msg(2, err, "late", [span(1, 1 * MS)]), msg(3, ok, "late", [span(1, 1 * MS, "ERROR")])], now_ns=3 * S)
    kept = by_topic(job.collect(3 * S), "traces.kept")
    assert len(kept) == 1 and kept[0].key == err
    late = avro.decode(avro.KEPT_TRACE, kept[0].value)
    assert late["late"] is True and late["span_count"] == 1
    assert late["batches"][0]["spans"][0]["attributes"]["sampling.late"] is True
    assert len(job.assembler) == 0  # the dropped trace's late error span did not start a new trace


def test_revoke_forgets_everything_of_the_lost_partition():
    job = make_job()
    job.ingest(
        [
            msg(0, os.urandom(16), "a", [span(1, 1 * MS, "ERROR")], partition=3),
            msg(0, os.urandom(16), "a", [span(1, 1 * MS, "ERROR")], partition=4),
        ],
        now_ns=0,
    )
    job.revoke({3})
    out = job.collect(20 * S)
    assert len(by_topic(out, "traces.kept")) == 1
    (window,) = by_topic(out, "sli.windows")
    assert avro.decode(avro.SLI_WINDOW, window.value)["partitions"] == [4]
    job.delivered(out.records)
    assert [(h.partition, h.offset) for h in job.ready()] == [(4, 0)]


def test_corrupt_span_detail_in_a_kept_trace_keeps_the_span_and_reports_it():
    job = make_job()
    tid = os.urandom(16)
    good = avro.decode_batch(batch_bytes(tid, "a", [span(1, 1 * MS, "ERROR", parent=None), span(1, 1 * MS)]))
    good["spans"][1]["detail"] = b"\x00\x07garbage"  # header sound, detail not
    job.ingest([Received(0, 0, tid, avro.encode_span_batch(good), 0)], now_ns=0)
    out = job.collect(2 * S)
    (kept,) = by_topic(out, "traces.kept")
    spans = avro.decode(avro.KEPT_TRACE, kept.value)["batches"][0]["spans"]
    assert len(spans) == 2
    assert spans[1]["attributes"]["tailsift.detail_error"] == "undecodable span detail"
    (dead,) = by_topic(out, "spans.deadletter")
    assert avro.decode(avro.DEAD_LETTER, dead.value)["reason"] == "detail_decode_error"


def test_rate_policy_guard_drops_are_exported():
    from pipeline import metrics

    job = make_job(policies=[{"name": "cap", "type": "rate_limiting", "spans_per_second": 1}])
    for i in range(30):
        job.ingest([msg(i, os.urandom(16), "a", [span(1, 1 * MS, parent=None)] * 5)], now_ns=i)
    job.collect(10 * S)
    job.update_gauges()
    policy = job.engine.policies[0]
    assert policy.guard_drops > 0  # 30 traces of 5 spans in one instant against 1 span/s
    assert metrics.POLICY_GUARD_DROPS.labels("cap")._value.get() == policy.guard_drops
