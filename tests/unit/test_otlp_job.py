"""The job with OTLP input/output: per-trace split, obligations, re-keying, kept OTLP, privacy."""

from __future__ import annotations

import hashlib
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.codecs import avro, otlp
from pipeline.job import Received
from pipeline.kafka.partitioner import TAILSIFT
from tests.support import jobs
from tests.support.jobs import MS
from tests.unit.test_otlp_codec import canonical, sdk_spans

# the SDK stamps spans with the real clock and the job refuses spans that end ahead of its own
# clock: the job's clock here runs a day ahead (spans from the past are fine)
NOW = time.time_ns() + 86_400_000 * MS
SAMPLING = ("sampling.policy", "sampling.reason", "sampling.adjusted_count")


def make_job(ingest="otlp_proto", emit="otlp_proto", rekey=True, privacy=False, policies=None):
    return jobs.make_job(
        ingest={"format": ingest, "rekey": rekey},
        emit={"format": emit},
        privacy={"enabled": privacy},
        assemble={"root_quiet_gap_ms": 0},
        sampling={"policies": policies or [{"name": "all", "type": "always_sample"}]},
    )


def kept(out, job):
    return jobs.records(out, job.kept_topic)


def strip_sampling(canon):
    for s in canon.values():
        for k in SAMPLING:
            s["attrs"].pop(k, None)
    return canon


def test_multi_trace_message_without_rekey_feeds_each_trace_and_round_trips():
    job = make_job(rekey=False)
    original = encode_spans(sdk_spans(3))
    job.ingest([Received(0, 0, None, original.SerializeToString(), ref=0)], now_ns=NOW)
    assert len(job.assembler) == 3
    out = job.collect(NOW + 2000 * MS, flush_all_windows=True)
    records = kept(out, job)
    assert len(records) == 3 and out.kept_traces == 3
    got = {}
    for r in records:
        canon = canonical(otlp.parse_request(r.value))
        assert all(s["trace_id"] == r.key for s in canon.values())
        assert all(s["attrs"]["sampling.policy"] == "all" for s in canon.values())
        got.update(canon)
    assert strip_sampling(got) == canonical(original)
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [0]  # 3 trace obligations + SLI windows, all met


def test_unkeyed_multi_trace_message_is_split_and_rekeyed_then_processed():
    job = make_job(ingest="otlp_json", emit="otlp_json")
    value = otlp.serialize_request(encode_spans(sdk_spans(2)), "otlp_json")
    job.ingest([Received(0, 0, b"not-a-trace-id", value, ref=0)], now_ns=NOW)
    assert len(job.assembler) == 0
    out = job.collect(NOW)
    rekeyed = [r for r in out.records if r.topic == job.input_topic]
    assert len(rekeyed) == 2 and len({r.key for r in rekeyed}) == 2
    assert job.ready() == []
    job.delivered(rekeyed)
    assert [h.offset for h in job.ready()] == [0]
    job.ingest([Received(3, i, r.key, r.value, ref=i) for i, r in enumerate(rekeyed)], now_ns=NOW)
    assert len(job.assembler) == 2
    out = job.collect(NOW + 2000 * MS, flush_all_windows=True)
    records = kept(out, job)
    assert len(records) == 2
    for r in records:
        canon = canonical(otlp.parse_request(r.value, "otlp_json"))
        assert len(canon) == 2 and all(s["trace_id"] == r.key for s in canon.values())


def test_otlp_json_is_rekeyed_one_copy_per_destination_partition():
    """The Python core, OTLP JSON (the native core does not read it): old code re-keyed a 3-trace
    request as 3 copies, one per trace. With the partition count known, two traces bound for
    partition 1 share one keyless copy (their spans in message order, under each resource they came
    in) and the third gets its own, keyed by it; read back on their partitions both stay, and the
    three traces are buffered with every span once."""
    pool = [hashlib.sha256(b"json %d" % i).digest()[:16] for i in range(200)]
    a, b = [t for t in pool if TAILSIFT.partition(t, 6) == 1][:2]
    c = next(t for t in pool if TAILSIFT.partition(t, 6) == 4)
    req = ExportTraceServiceRequest()
    n = 0
    for service, tids in (("cart", [a, c, b, a]), ("db", [b, c])):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = service
        ss = rs.scope_spans.add()
        for tid in tids:
            n += 1
            sp = ss.spans.add(trace_id=tid, span_id=n.to_bytes(8, "big"), name=f"op{n}")
            sp.start_time_unix_nano, sp.end_time_unix_nano = NOW - 9 * MS, NOW - MS
    value = otlp.serialize_request(req, "otlp_json")
    job = make_job(ingest="otlp_json", emit="otlp_json")
    job.input_partitions = 6
    job.ingest([Received(0, 0, None, value, ref=0)], now_ns=NOW)
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert [(r.key, r.partition) for r in copies] == [(None, 1), (c, 4)]

    def spans(v):
        return [
            (otlp._service(rs.resource), sp.trace_id, sp.name)
            for rs in otlp.parse_request(v, "otlp_json").resource_spans
            for ss in rs.scope_spans
            for sp in ss.spans
        ]

    assert spans(copies[0].value) == [s for s in spans(value) if s[1] in (a, b)]
    assert spans(copies[1].value) == [s for s in spans(value) if s[1] == c]
    job.delivered(copies)
    job.ingest([Received(r.partition, 0, r.key, r.value, ref=1 + i) for i, r in enumerate(copies)], now_ns=NOW)
    assert [r for r in job.collect(NOW).records if r.topic == job.input_topic] == []
    assert len(job.assembler) == 3 and job.assembler.buffered_spans == 6


def test_attribute_policy_reads_otlp_attributes_lazily_and_avro_output_decodes():
    job = make_job(
        emit="avro",
        policies=[{"name": "neg", "type": "numeric_attribute", "key": "i", "min_value": -50, "max_value": -40}],
    )
    req = encode_spans(sdk_spans(1))
    tid = req.resource_spans[0].scope_spans[0].spans[0].trace_id
    job.ingest([Received(0, 0, tid, req.SerializeToString(), ref=0)], now_ns=NOW)
    (rec,) = kept(job.collect(NOW + 2000 * MS), job)
    trace = avro.decode(avro.KEPT_TRACE, rec.value)
    assert trace["policy"] == "neg" and trace["span_count"] == 2
    (batch,) = trace["batches"]
    assert batch["resource"]["service.name"] == "checkout" and batch["scope_name"] == "tailsift.tests"
    root = next(s for s in batch["spans"] if s["parent_span_id"] is None)
    assert root["attributes"]["ia"] == [1, 2, 3] and root["events"][0]["name"] == "cache.miss"


def test_privacy_protects_otlp_output():
    job = make_job(privacy=True)
    req = encode_spans(sdk_spans(1))
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    sp.attributes.add(key="user.email").value.string_value = "alice@example.com"
    job.ingest([Received(0, 0, sp.trace_id, req.SerializeToString(), ref=0)], now_ns=NOW)
    out = job.collect(NOW + 2000 * MS)
    (rec,) = kept(out, job)
    assert b"alice@example.com" not in rec.value
    assert any(r.topic == job.pii_audit_topic for r in out.records)


def test_malformed_otlp_is_dead_lettered():
    job = make_job()
    job.ingest([Received(0, 0, None, b"\xff\xff\xff garbage", ref=0), Received(0, 1, None, b"", ref=1)], now_ns=NOW)
    dl = [
        avro.decode(avro.DEAD_LETTER, r.value)["reason"]
        for r in job.collect(NOW).records
        if r.topic == job.deadletter_topic
    ]
    assert dl == ["decode_error", "empty_value"]


def test_kept_summary_reads_the_sampling_facts_back():
    job = make_job(emit="otlp_json")
    req = encode_spans(sdk_spans(1))
    tid = req.resource_spans[0].scope_spans[0].spans[0].trace_id
    job.ingest([Received(0, 0, tid, req.SerializeToString(), ref=0)], now_ns=NOW)
    (rec,) = kept(job.collect(NOW + 2000 * MS), job)
    summary = otlp.kept_summary(rec.key, rec.value, "otlp_json")
    assert summary == {"trace_id": tid, "policy": "all", "adjusted_count": 1.0, "late": False, "span_count": 2}
