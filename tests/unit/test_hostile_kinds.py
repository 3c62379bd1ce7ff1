"""Hostile kinds the chaos suite sends (issue 13, fuzz), decided as an SRE would:

- an all-zero span ID is invalid (W3C): poison, dead-lettered ``invalid_span_id``;
- a span larger than ``ingest.max_span_bytes`` (default 512 KiB; a 1 MiB attribute value) is poison,
  ``span_too_large``: no output record could carry it (the kept path dead-lettered it there, after
  it had been counted, buffered and decoded), and it costs every stage on the way;
- more attributes on one span than ``ingest.max_attributes_per_span`` (default 1,000; 10,000 sent)
  is poison, ``too_many_attributes``: decode, PII scan and memory of a kept trace grow with each;
- a span starting after it ends, within ``ingest.max_clock_skew_ms``, is data: accepted, counted
  (latency 0), decided like any span — one bad clock must not cost the rest of its message.

The old job took all four as data: the spans were counted in the SLIs and routed (observed in the
chaos fuzz run: "not dead-lettered: zero_span_id / attr_1mib / attrs_10000", "hostile spans counted
in SLIs")."""

from __future__ import annotations

import os
import random

import pytest

from pipeline import config
from pipeline.chaos import fuzz
from pipeline.codecs import avro
from pipeline.job import Job, Received

MS = 1_000_000
S = 1_000 * MS
NOW = 1_700_000_000 * S
FORMATS = ("avro", "otlp_proto", "otlp_json")


def make_job(fmt, **ingest):
    cfg = config.parse(
        {
            "ingest": {"format": fmt, **ingest},
            "job": {"processing_guarantee": "at_least_once"},
            "privacy": {"enabled": False},
            "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0},
            "sli": {"window_seconds": 10, "grace_seconds": 0},
            "sampling": {"policies": [{"name": "all", "type": "always_sample"}]},
        }
    )
    return Job(cfg, worker_id="test")


def message(offset, fmt, service="svc", span_id=None, attributes=None, start=NOW - 2 * MS, end=NOW - MS):
    """One single-span trace in ``fmt``, keyed by its trace ID."""
    tid = os.urandom(16)
    sp = {
        "span_id": span_id if span_id is not None else os.urandom(8),
        "parent_span_id": None,
        "name": "op",
        "kind": "SERVER",
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status_code": "UNSET",
        "status_message": "",
        "trace_state": "",
        "attributes": attributes if attributes is not None else {"k": "v"},
        "events": [],
        "links": [],
    }
    batch = {"trace_id": tid, "service": service, "spans": [sp], "resource": {"service.name": service}}
    return Received(0, offset, tid, fuzz.encode(batch, fmt), ref=offset)


def run(job, msgs):
    """Ingest, decide everything, ack every record: (dead letters by offset, SLI spans by service,
    kept trace IDs, committable offsets)."""
    job.ingest(msgs, NOW)
    out = job.collect(NOW + 2 * S, flush_all_windows=True)
    job.delivered(out.records)
    dls = {
        d["offset"]: d
        for d in (avro.decode(avro.DEAD_LETTER, r.value) for r in out.records if r.topic == job.deadletter_topic)
    }
    sli: dict[str, int] = {}
    for r in out.records:
        if r.topic == job.sli_topic:
            w = avro.decode(avro.SLI_WINDOW, r.value)
            sli[w["service"]] = sli.get(w["service"], 0) + w["span_count"]
    kept = [r.key for r in out.records if r.topic == job.kept_topic]
    return dls, sli, kept, [h.offset for h in job.ready()]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "kind, build, reason",
    [
        ("zero_span_id", {"span_id": bytes(8)}, "invalid_span_id"),
        ("attr_1mib", {"attributes": {"big": "A" * (1 << 20)}}, "span_too_large"),
        ("attrs_10000", {"attributes": {f"a{i}": i for i in range(10_000)}}, "too_many_attributes"),
    ],
)
def test_poison_kinds_are_dead_lettered_at_ingest_and_never_counted(fmt, kind, build, reason):
    """Old code: none dead-lettered; the hostile span counted in the SLIs (service ``bad``) and
    its trace kept (the 1 MiB one as a dead letter only at the kept path, span_too_large, after
    it was counted)."""
    job = make_job(fmt)
    bad = message(0, fmt, service="bad", **build)
    good = message(1, fmt, service="good")
    dls, sli, kept, ready = run(job, [bad, good])
    assert {o: d["reason"] for o, d in dls.items()} == {0: reason}
    setting = {"span_too_large": "ingest.max_span_bytes = 524288", "too_many_attributes": "= 1000 "}.get(reason, "")
    assert setting in dls[0]["detail"] + " "
    assert sli == {"good": 1}  # the poison reached no SLI window
    assert kept == [good.key]
    assert ready == [0, 1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_limits_are_configurable(fmt):
    """Raised limits take what the defaults refuse (and the size limit is the span's, not the message's:
    many small spans in one large message pass)."""
    assert make_job(fmt).config.ingest.max_span_bytes < 600 << 10  # the default refuses 600 KiB
    job = make_job(fmt, max_span_bytes=1 << 20, max_attributes_per_span=20_000)
    msgs = [
        message(0, fmt, attributes={"big": "A" * (600 << 10)}),
        message(1, fmt, attributes={f"a{i}": i for i in range(10_000)}),
    ]
    dls, sli, kept, ready = run(job, msgs)
    assert dls == {} and sli == {"svc": 2} and len(kept) == 2 and ready == [0, 1]
    job = make_job(fmt, max_span_bytes=1024, max_attributes_per_span=10)
    tid = os.urandom(16)
    spans = [{**avro.decode_batch(message(0, "avro").value)["spans"][0], "span_id": os.urandom(8)} for _ in range(200)]
    assert len(spans) * 12 > 1024  # the message is larger than max_span_bytes, each span is not
    value = (
        avro.encode_span_batch({"trace_id": tid, "service": "svc", "spans": spans})
        if fmt == "avro"
        else fuzz.encode(
            {
                "trace_id": tid,
                "service": "svc",
                "spans": [{**s, **avro.EMPTY_DETAIL, "attributes": {"k": "v"}} for s in spans],
                "resource": {},
            },
            fmt,
        )
    )
    assert len(value) > 1024
    dls, sli, _, ready = run(job, [Received(0, 0, tid, value, ref=0)])
    assert dls == {} and sli == {"svc": 200} and ready == [0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_start_after_the_end_within_the_clock_skew_is_data(fmt):
    """Decided as data (README "Guarantees"): a span whose start is 1 s after its end is counted and
    kept with the rest of its message; beyond ``ingest.max_clock_skew_ms`` it is dead-lettered."""
    job = make_job(fmt, max_clock_skew_ms=60_000)
    within = message(0, fmt, start=NOW - MS + S, end=NOW - MS)
    beyond = message(1, fmt, start=NOW - MS + 61 * S, end=NOW - MS)
    dls, sli, kept, ready = run(job, [within, beyond])
    assert {o: d["reason"] for o, d in dls.items()} == {1: "invalid_timestamp"}
    assert sli == {"svc": 1} and kept == [within.key] and ready == [0, 1]


@pytest.mark.parametrize(
    "ingest",
    [
        {"max_span_bytes": 0},
        {"max_span_bytes": -1},
        {"max_span_bytes": 1 << 40},
        {"max_attributes_per_span": 0},
        {"max_attributes_per_span": "many"},
    ],
)
def test_invalid_limits_are_refused_at_load(ingest):
    with pytest.raises(config.ConfigError, match=f"ingest.{next(iter(ingest))}"):
        config.parse({"ingest": ingest})


def test_avro_attribute_count_reads_block_headers_sized_or_not():
    """fastavro writes the map as one block with a positive count; a blocking writer (Java's
    BlockingBinaryEncoder) writes negative counts followed by the block's byte size — both counted
    without decoding an entry; a detail that is not Avro counts 0 (the kept path reports it)."""
    detail = avro.encode_detail(
        {**avro.EMPTY_DETAIL, "status_message": "x", "attributes": {f"a{i}": i for i in range(1500)}}
    )
    assert avro.attribute_count(detail, 1000) == 1500
    # the same map as two sized blocks of 700 and 800 entries

    def zz(n: int) -> bytes:  # an Avro long: zig-zag, then base-128 varint
        z = (n << 1) ^ (n >> 63)
        out = bytearray()
        while z > 0x7F:
            out.append(z & 0x7F | 0x80)
            z >>= 7
        out.append(z)
        return bytes(out)

    def entries(rng):
        out = b""
        for i in rng:
            key = f"a{i}".encode()
            out += zz(len(key)) + key + zz(2) + zz(i)  # union index 2: long
        return out

    blocks = b""
    for rng in (range(700), range(700, 1500)):
        body = entries(rng)
        blocks += zz(-len(rng)) + zz(len(body)) + body
    sized = zz(1) + b"x" + blocks + zz(0) + zz(0) + zz(0)  # + empty events and links
    assert avro.decode_detail(sized)["attributes"] == {f"a{i}": i for i in range(1500)}
    assert avro.attribute_count(sized, 1000) == 1500
    assert avro.attribute_count(sized, 600) == 700  # stops once past the bound
    assert avro.attribute_count(b"\xff", 10) == 0


@pytest.mark.parametrize("fmt", ("avro", "otlp_proto"))
def test_the_fuzz_suite_judges_a_mutation_by_the_jobs_checks_not_only_the_decoder(fmt):
    """Old ``fuzz.still_valid``: a bit flip that left the message decodable but put a span time far
    in the future was called still valid — sent untagged, dead-lettered by the job as
    invalid_timestamp, and counted as "good messages dead-lettered" (3–4 per format, the relaxed
    figure whose cause had not been found)."""
    rng = random.Random(1)
    batch = fuzz._batch(rng, spans=[fuzz._span(rng, end_time_unix_nano=fuzz.FAR_FUTURE_NS)])
    value = fuzz.encode(batch, fmt)
    assert fuzz.still_valid(value, fmt) is False
    assert fuzz.still_valid(fuzz.encode(fuzz._batch(rng), fmt), fmt) is True


def test_odd_but_valid_fuzz_messages_are_fresh_traces_of_their_own_service():
    sent = [h for h in fuzz.messages(400, "avro", seed=3) if h.kind in fuzz.DATA_KINDS]
    assert len(sent) >= 5
    assert len({h.key for h in sent}) == len(sent)  # each its own trace: no duplicate span in traces.kept
    for h in sent:
        assert h.batch["trace_id"] == h.key and h.batch["service"] == fuzz.DATA_SERVICE
        assert fuzz.still_valid(h.value, "avro", now_ns=h.batch["spans"][0]["end_time_unix_nano"])


def test_the_decision_figure_counts_disagreeing_records_not_rewrites():
    """Old figure "traces with >1 decision": every trace with more than one record in the log —
    ~120 per crash-storm run, all the same verdict rewritten (late spans of kept traces, replays),
    which the compacted log reduces to one. Now only records that disagree count."""
    from pipeline.chaos.verify import judge_decisions

    keep, late = (True, "errors", 1.0), (True, "errors", 1.0)
    assert judge_decisions([]) == "missing"
    assert judge_decisions([keep]) == "one"
    assert judge_decisions([keep, late, late]) == "rewritten"
    assert judge_decisions([keep, (True, "probabilistic", 0.1)]) == "multiple"
    assert judge_decisions([keep, (False, "probabilistic", 0.1)]) == "conflicting"


@pytest.mark.parametrize("fmt", ("avro", "otlp_proto"))
def test_a_mutation_the_job_takes_is_ground_truth_for_the_suite(fmt):
    """Old suite: a bit-flipped message that still decoded was sent "not judged", yet its spans in
    the SLIs counted as "hostile spans counted in SLIs" (21 Avro, 10 OTLP in the short profile)."""
    rng = random.Random(5)
    batch = fuzz._batch(rng, spans=[fuzz._span(rng, status_code="ERROR")])
    ((tid, batches),) = fuzz.truth_batches(fuzz.encode(batch, fmt), fmt)
    assert tid == batch["trace_id"]
    (b,) = batches
    assert b["service"] == batch["service"]
    assert [(s["span_id"], s["name"], s["kind"], s["status_code"]) for s in b["spans"]] == [
        (batch["spans"][0]["span_id"], "fuzz-op", "SERVER", "ERROR")
    ]
