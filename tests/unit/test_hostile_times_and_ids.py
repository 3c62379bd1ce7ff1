"""Hostile timestamps and ids: one bad span must never stop, stall or poison anything. It is
dead-lettered with a reason (``invalid_timestamp``, ``invalid_span_id``, ``encode_error``) and
never reaches an SLI window, a watermark or an encoder; the rest of the batch goes on."""

from __future__ import annotations

import os

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline import config
from pipeline.codecs import avro, otlp
from pipeline.job import Job, Received
from tests.spans import batch_bytes, span

MS = 1_000_000
S = 1_000 * MS
NOW = 1_700_000_000 * S  # the worker clock in these tests
HOUR = 3_600 * S
BEYOND_LONG = 1 << 63  # OTLP times are fixed64: this fits the wire, not an Avro long


def make_job(time="processing", ingest="avro", emit="avro", **assemble):
    cfg = config.parse(
        {
            "ingest": {"format": ingest},
            "emit": {"format": emit},
            "job": {"processing_guarantee": "at_least_once"},
            "privacy": {"enabled": False},
            "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0, "time": time, **assemble},
            "sli": {"window_seconds": 10, "grace_seconds": 0},
            "sampling": {"policies": [{"name": "errors", "type": "status_code"}]},
        }
    )
    return Job(cfg, worker_id="test")


def avro_msg(offset, trace_id, spans, partition=0, events=None):
    value = batch_bytes(trace_id, "svc", spans)
    if events is not None:  # re-encode with span events in the detail
        batch = avro.decode_batch(value)
        for s in batch["spans"]:
            s["detail"] = avro.encode_detail({"status_message": "", "attributes": {}, "events": events, "links": []})
        value = avro.encode_span_batch(batch)
    return Received(partition, offset, trace_id, value, ref=offset)


def otlp_msg(offset, trace_id, start, end, status=2, parent=b"", links=(), event_times=()):
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    sp = rs.scope_spans.add().spans.add()
    sp.trace_id, sp.span_id, sp.parent_span_id = trace_id, os.urandom(8), parent
    sp.name, sp.kind, sp.start_time_unix_nano, sp.end_time_unix_nano = "op", 2, start, end
    sp.status.code = status
    for link_trace, link_span in links:
        sp.links.add(trace_id=link_trace, span_id=link_span)
    for t in event_times:
        sp.events.add(time_unix_nano=t, name="e")
    return Received(0, offset, trace_id, req.SerializeToString(), ref=offset)


def records(out, job, topic):
    return [r for r in out.records if r.topic == getattr(job, topic)]


def dead_letters(out, job):
    return {
        (d["offset"], d["reason"]): d["detail"] for d in map(decode_dead_letter, records(out, job, "deadletter_topic"))
    }


def decode_dead_letter(record):
    return avro.decode(avro.DEAD_LETTER, record.value)


def drain(job, now_ns):
    """Collect everything due at ``now_ns``, ack every record, return (outbox, offsets now committable)."""
    out = job.collect(now_ns, flush_all_windows=True)
    job.delivered(out.records)
    return out, [h.offset for h in job.ready()]


def encodable(out, job):
    """Every emitted record decodes with its topic's schema."""
    for r in out.records:
        if r.topic == job.kept_topic:
            if job.emit_format == "avro":
                avro.decode(avro.KEPT_TRACE, r.value)
            else:
                otlp.parse_request(r.value, job.emit_format)
        elif r.topic == job.sli_topic:
            avro.decode(avro.SLI_WINDOW, r.value)


# ---------------------------------------------------------------- 1. poison pill in SLI emission
def test_an_avro_span_ending_near_2_63_is_dead_lettered_and_sli_emission_goes_on():
    """Old code: the span passed ingest; its SLI window end (>= 2^63) did not fit an Avro long and
    collect() raised on every call (observed: OverflowError, nothing was emitted —
    with exactly_once a crash loop on one message that was never dead-lettered)."""
    job = make_job()
    bad, good = os.urandom(16), os.urandom(16)
    end = (1 << 63) - 1
    job.ingest(
        [avro_msg(0, bad, [span(end - MS, end, "ERROR")]), avro_msg(1, good, [span(NOW - MS, NOW, "ERROR")])], NOW
    )
    out, ready = drain(job, NOW + 2 * S)
    assert list(dead_letters(out, job)) == [(0, "invalid_timestamp")]
    (kept,) = records(out, job, "kept_topic")
    assert kept.key == good
    (window,) = [avro.decode(avro.SLI_WINDOW, r.value) for r in records(out, job, "sli_topic")]
    assert window["span_count"] == 1
    assert ready == [0, 1]


@pytest.mark.parametrize(
    "start, end, event_times",
    [
        (NOW - MS, BEYOND_LONG + 5, ()),  # end beyond a long: the SLI window end overflowed
        (BEYOND_LONG, NOW, ()),  # start beyond a long: the kept trace's Avro encode raised
        (NOW - MS, NOW, (BEYOND_LONG,)),  # event time beyond a long: the kept trace's Avro encode raised
        (0, NOW, ()),  # start unset: a 53-year latency in the SLI windows
    ],
    ids=["end", "start", "event", "start-zero"],
)
def test_otlp_times_beyond_a_long_are_dead_lettered_and_the_batch_goes_on(start, end, event_times):
    """Old code: end >= 2^63 made every collect() raise (SLI window end), start or an event time
    >= 2^63 made the kept trace's Avro encode raise in collect() (observed: OverflowError, nothing
    emitted); start 0 was taken and counted a 53-year latency. Now the message is dead-lettered
    as invalid_timestamp and the other trace of the batch is kept."""
    job = make_job(ingest="otlp_proto")
    bad, good = os.urandom(16), os.urandom(16)
    job.ingest([otlp_msg(0, bad, start, end, event_times=event_times), otlp_msg(1, good, NOW - MS, NOW)], NOW)
    out, ready = drain(job, NOW + 2 * S)
    assert list(dead_letters(out, job)) == [(0, "invalid_timestamp")]
    assert [r.key for r in records(out, job, "kept_topic")] == [good]
    encodable(out, job)
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, job, "sli_topic")) == (
        2 if event_times else 1  # an event time is found only when the trace is kept: its span counted
    )
    assert ready == [0, 1]


# ---------------------------------------------------------------- 2. unvalidated OTLP ids
@pytest.mark.parametrize(
    "parent, links",
    [(b"\xffpar\x00", ()), (b"", ((b"\xfftr\x00", os.urandom(8)),)), (b"", ((os.urandom(16), b"\xfesp"),))],
    ids=["parent", "link-trace", "link-span"],
)
def test_otlp_ids_of_the_wrong_length_are_dead_lettered_and_the_rest_of_the_batch_is_ingested(parent, links):
    """Old code: a 5-byte parent span ID or a link ID of the wrong length passed ingest; in event
    time the kept trace's Avro encode raised inside ingest() (observed: ValueError mid-batch, the
    messages after it never ingested), and the raised text quoted the raw id bytes. Now the
    message is dead-lettered as invalid_span_id with lengths only, and the batch goes on."""
    job = make_job(time="event", ingest="otlp_proto", allowed_lateness_ms=0)
    bad, after, later = os.urandom(16), os.urandom(16), os.urandom(16)
    job.ingest(
        [
            otlp_msg(0, bad, NOW - MS, NOW, parent=parent, links=links),
            otlp_msg(1, after, NOW + 2 * S, NOW + 3 * S),  # moves the watermark: `bad` is decided here
            otlp_msg(2, later, NOW + 3 * S, NOW + 4 * S),
        ],
        NOW + 5 * S,
    )
    assert [b.trace_id for b in job.assembler] == [later]  # offset 2 was ingested and sealed `after`
    out, ready = drain(job, NOW + 5 * S)
    # a parent ID is checked at ingest; link IDs when the trace is kept (lazy: not read for drops)
    assert {r.key for r in records(out, job, "decisions_topic")} == ({bad, after} if links else {after})
    (((offset, reason), detail),) = dead_letters(out, job).items()
    assert (offset, reason) == (0, "invalid_span_id")
    assert detail.isascii() and detail.isprintable() and "bytes, not" in detail
    for raw in [parent, *[i for link in links for i in link]]:
        if raw:
            assert repr(raw)[2:-1] not in detail
    encodable(out, job)


# ---------------------------------------------------------------- 3. a future end blocks commits
def test_a_span_ending_hours_ahead_does_not_hold_back_the_commits_of_its_partition():
    """Old code (at_least_once): a span ending 3 h ahead opened an SLI window that closes only
    then; its offset and every later one stayed uncommitted (observed: 0 of 1,001 offsets
    committable after two minutes). Now it is dead-lettered and all 1,001 are committable."""
    job = make_job()
    messages = [avro_msg(0, os.urandom(16), [span(NOW + 3 * HOUR - MS, NOW + 3 * HOUR)])]
    messages += [avro_msg(i, os.urandom(16), [span(NOW - MS, NOW)]) for i in range(1, 1001)]
    job.ingest(messages, NOW)
    out, ready = drain(job, NOW + 120 * S)
    assert list(dead_letters(out, job)) == [(0, "invalid_timestamp")]
    assert "ahead of the worker clock" in dead_letters(out, job)[(0, "invalid_timestamp")]
    assert ready == list(range(1001))


# ---------------------------------------------------------------- 4. event-time watermark poisoning
def test_a_far_future_span_does_not_move_the_event_time_watermark():
    """Old code (event time): one span 3 h ahead moved its partition's watermark for good; the
    next trace was decided on its first fragment and its error, 1 ms later, followed the drop
    (observed: no kept trace). Now that span is dead-lettered and the trace is decided whole."""
    job = make_job(time="event")
    trace, other = os.urandom(16), os.urandom(16)
    job.ingest(
        [
            avro_msg(0, os.urandom(16), [span(NOW + 3 * HOUR - MS, NOW + 3 * HOUR)]),
            avro_msg(1, trace, [span(NOW - 5 * MS, NOW, parent=None)]),
            avro_msg(2, trace, [span(NOW - 4 * MS, NOW + 1 * MS, "ERROR")]),
            avro_msg(3, other, [span(NOW + 4 * S, NOW + 5 * S)]),  # moves the watermark past `trace`
        ],
        NOW + 5 * S,
    )
    out, _ = drain(job, NOW + 5 * S)
    assert list(dead_letters(out, job)) == [(0, "invalid_timestamp")]
    (kept,) = records(out, job, "kept_topic")
    decoded = avro.decode(avro.KEPT_TRACE, kept.value)
    assert kept.key == trace and decoded["span_count"] == 2 and decoded["policy"] == "errors"


# ---------------------------------------------------------------- defence in depth
def test_a_kept_record_that_cannot_be_encoded_dead_letters_its_inputs_and_the_outbox_goes_on():
    """Old code: an Avro span event with a negative time (a valid Avro long) made the OTLP encode
    of the kept trace raise (fixed64), so collect() raised and no record of the outbox was
    produced (observed: ValueError). Now that trace's message is dead-lettered as encode_error,
    with the exception type only, and the other kept trace is emitted."""
    job = make_job(emit="otlp_proto")
    bad, good = os.urandom(16), os.urandom(16)
    event = {"time_unix_nano": -1, "name": "e", "attributes": {}}
    job.ingest(
        [
            avro_msg(0, bad, [span(NOW - MS, NOW, "ERROR")], events=[event]),
            avro_msg(1, good, [span(NOW - MS, NOW, "ERROR")]),
        ],
        NOW,
    )
    out, ready = drain(job, NOW + 2 * S)
    letters = dead_letters(out, job)
    assert list(letters) == [(0, "encode_error")]
    assert letters[(0, "encode_error")] == "kept trace not encodable as otlp_proto: ValueError"
    assert [r.key for r in records(out, job, "kept_topic")] == [good]
    encodable(out, job)
    assert ready == [0, 1]
