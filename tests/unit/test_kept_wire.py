"""Kept OTLP traces written from their spans' own bytes (``pipeline.codecs.otlp_kept.KeptWriter``)
against the reference path (full decode to dicts, ``Protector.protect_span``, ``encode_request``):
the same request (parsed), the same size, the same audit counts, the same parts when split — for
random spans full of PII and values the dict shape cannot carry, privacy on and off, and through
the job on generated traffic in both output formats.

Before the writer, the reference path was the only path: these tests pin the writer to it, so
"prefilter says unchanged" can never let through a span that protection would have changed."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from operators.tracestate import with_threshold
from pipeline.chaos import canaries, fuzz
from pipeline.codecs import avro, otlp
from pipeline.codecs.otlp_kept import KeptWriter
from pipeline.job import Job, Received
from pipeline.peerbench import traffic as peer_traffic
from pipeline.privacy import PII_AUDIT, build_protector
from tests.support.jobs import MS, S, make_config
from tests.support.jobs import records as by_topic

KEY = bytes(range(32))
ENV = {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()}
C = canaries.CHAOS
PROTECTOR = build_protector(make_config(privacy={"enabled": True}).privacy, ENV)
SAMPLING = {"sampling.policy": "p", "sampling.reason": "r", "sampling.adjusted_count": 20.0}

# ------------------------------------------------------------------ random spans
TEXTS = [
    "",
    "ok",
    "checkout.Handle",
    "GET /users/123456/orders",
    "GET /health",
    "SELECT * FROM orders WHERE id = 42 AND email = 'a@b.co'",
    "select 1",
    "https://shop.example/cart?user=alice@example.com&x=1",
    "/api/v1/items",
    f"user {C.email} paid with {C.card}",
    C.email,
    C.ip,
    C.jwt,
    C.api_key,
    f"id {C.uid}",
    "Bearer\u00a0abcdefgh12345678",  # a non-breaking space: str regexes match it as \s
    "caf\u00e9 \u0663\u0663\u0663-\u0663\u0663-\u0663\u0663\u0663\u0663",  # Arabic-Indic digits
    "tok:k1:abcdef",
    "mysql",
    "postgresql",
    "redis",
    'SELECT name FROM users WHERE id = "x"',  # a literal in MySQL only: sanitized by db.system
    "SELECT name FROM users",  # no literal, except for a Redis command's arguments
]
KEYS = [
    "http.route",
    "note",
    "k8s.pod.name",
    "db.system",
    "db.system.name",
    "db.query.text",
    "db.statement",
    "enduser.id",
    "user.email",
    "password",
    "url.full",
    "sampling.policy",
    "sampling.priority",
    "tailsift.detail_error",
    C.email,
    f"user.{C.uid}",
    "server.address",
]
TRACE_STATES = ["", "ot=th:8", "ot=th:8;rv:0123456789abcd", "shop=u:123", "a=b, c=d", "Bad Key=x", "ot=zz:1"]

scalars = st.one_of(
    st.sampled_from(TEXTS),
    st.text(max_size=12),
    st.booleans(),
    st.sampled_from([0, 7, -3, 10**12, 4111111111111111, 2**63 - 1]),
    st.sampled_from([0.5, 4111111111111111.0, float("inf")]),
    st.sampled_from([b"", b"raw", C.email.encode(), b"\xff\xfe"]),
)


@st.composite
def any_values(draw, depth: int = 0) -> AnyValue:
    v = AnyValue()
    kind = draw(st.sampled_from(["scalar"] * 6 + ["array", "kvlist", "none"]))
    if kind == "scalar":
        otlp.py_to_value(draw(scalars), v)
    elif kind == "array":
        v.array_value.SetInParent()
        for _ in range(draw(st.integers(0, 3))):
            item = v.array_value.values.add()
            if depth < 1 and draw(st.booleans()):
                item.CopyFrom(draw(any_values(depth + 1)))
            else:
                otlp.py_to_value(draw(scalars), item)
    elif kind == "kvlist":
        v.kvlist_value.SetInParent()
        kv = v.kvlist_value.values.add(key=draw(st.sampled_from(KEYS)))
        otlp.py_to_value(draw(scalars), kv.value)
    return v


def key_values(max_size: int = 4):
    keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
    return st.lists(st.tuples(keys, any_values()), max_size=max_size)


def _fill(target, pairs) -> None:
    for key, value in pairs:
        target.add(key=key).value.CopyFrom(value)


@st.composite
def spans(draw, trace_id: bytes) -> Span:
    sp = Span(
        trace_id=trace_id,
        span_id=draw(st.binary(min_size=8, max_size=8).filter(any)),
        name=draw(st.one_of(st.sampled_from(TEXTS), st.text(max_size=12))),
        kind=draw(st.sampled_from([0, 1, 2, 5, 9])),
        start_time_unix_nano=1_000,
        end_time_unix_nano=2_000,
        trace_state=draw(st.sampled_from(TRACE_STATES)),
        flags=draw(st.sampled_from([0, 1, 0x301])),
    )
    if draw(st.booleans()):
        sp.status.code = draw(st.sampled_from([0, 1, 2, 7]))
        sp.status.message = draw(st.sampled_from(TEXTS))
    _fill(sp.attributes, draw(key_values()))
    sp.dropped_attributes_count = draw(st.sampled_from([0, 0, 0, 2]))
    for _ in range(draw(st.integers(0, 2))):
        ev = sp.events.add(time_unix_nano=1_500, name=draw(st.sampled_from(TEXTS)))
        _fill(ev.attributes, draw(key_values(2)))
        ev.dropped_attributes_count = draw(st.sampled_from([0, 0, 1]))
    for _ in range(draw(st.integers(0, 2))):
        ln = sp.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)))
        ln.trace_state = draw(st.sampled_from(TRACE_STATES))
        ln.flags = draw(st.sampled_from([0, 0, 1]))
        _fill(ln.attributes, draw(key_values(2)))
    if draw(st.integers(0, 9)) == 0:  # a field this Span schema does not know (number 99, a string)
        sp.MergeFromString(b"\x9a\x06" + bytes([len(C.email)]) + C.email.encode())
    return sp


@st.composite
def requests(draw) -> bytes:
    trace_id = bytes(range(16, 32))
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = req.resource_spans.add()
        _fill(rs.resource.attributes, [("service.name", _text("svc"))] + draw(key_values(2)))
        ss = rs.scope_spans.add()
        ss.scope.name = draw(st.sampled_from(TEXTS))
        ss.spans.extend(draw(st.lists(spans(trace_id), min_size=1, max_size=4)))
    return req.SerializeToString()


def _text(s: str) -> AnyValue:
    v = AnyValue()
    v.string_value = s
    return v


def reference(value: bytes, protector, threshold: int | None) -> tuple[bytes, dict]:
    """The kept path before the writer (``Protect._kept_batches`` with the OTLP codec)."""
    (trace,) = otlp.decode_traces(value).values()
    batches, counts = otlp.kept_batches(trace), {}
    for b in batches:
        for span in b["spans"]:
            if protector is not None:
                protector.protect_span(span, counts)
            span["attributes"].update(SAMPLING)
            if threshold is not None:
                span["trace_state"] = with_threshold(span["trace_state"], threshold)
        if protector is not None:
            protector.protect_batch(b, counts)
    return otlp.encode_request(batches), counts


@pytest.mark.parametrize("privacy", [True, False])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=requests(), threshold=st.sampled_from([None, 0x80000000000000]))
def test_written_from_own_bytes_equals_the_reference_path(privacy, value, threshold):
    protector = PROTECTOR if privacy else None
    writer = KeptWriter(protector)
    (trace,) = otlp.decode_traces(value).values()
    # the prefilter's own promise: a span it passes is left identical by full protection
    for header in trace.spans:
        sp = Span()
        sp.CopyFrom(header["detail"])
        sp.DiscardUnknownFields()
        if writer._unchanged(sp):
            span = otlp.span_to_dict(header, sp)
            before, counts = repr(span), {}
            if protector is not None:
                protector.protect_span(span, counts)
            assert repr(span) == before and counts == {}
    counts: dict[str, int] = {}
    got = otlp.encode_request(writer.batches(trace, SAMPLING, threshold, counts))
    want, want_counts = reference(value, protector, threshold)
    assert otlp.parse_request(got) == otlp.parse_request(want)
    assert len(got) == len(want)  # the same size: a split cuts in the same places
    assert counts == want_counts
    if privacy:
        assert canaries.hits(got) == canaries.hits(want)


def test_a_span_with_pii_is_rewritten_and_a_clean_one_keeps_its_bytes():
    """The two ways out, seen from outside: a clean span's bytes are in the output as they came
    (plus the appended annotations), a span with an e-mail is rewritten with the token."""
    trace_id = bytes(range(16, 32))
    clean = Span(
        trace_id=trace_id, span_id=b"\x01" * 8, name="checkout.Handle", start_time_unix_nano=1, end_time_unix_nano=2
    )
    clean.attributes.add(key="http.route").value.string_value = "/cart"
    clean.status.SetInParent()
    dirty = Span(
        trace_id=trace_id, span_id=b"\x02" * 8, name="checkout.Handle", start_time_unix_nano=1, end_time_unix_nano=2
    )
    dirty.attributes.add(key="note").value.string_value = f"mail {C.email}"
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    rs.scope_spans.add().spans.extend([clean, dirty])
    (trace,) = otlp.decode_traces(req.SerializeToString()).values()
    counts: dict[str, int] = {}
    out = otlp.encode_request(KeptWriter(PROTECTOR).batches(trace, SAMPLING, None, counts))
    assert clean.SerializeToString() in out
    assert C.email.encode() not in out and counts == {"detector:email": 1}
    (written,) = otlp.kept_batches(next(iter(otlp.decode_traces(out).values())))
    assert written["spans"][1]["attributes"]["note"] == f"mail {PROTECTOR.tokenizer.token(C.email)}"
    assert written["spans"][0]["attributes"] == {"http.route": "/cart", **SAMPLING}


@pytest.mark.parametrize("order", [("mysql", "postgresql", "redis"), ("postgresql", "redis", "mysql")])
def test_a_statement_is_judged_with_its_own_spans_db_system(order):
    """The same statement bytes are clean beside one ``db.system`` and not beside another: the
    writer's answer for the statement must not carry over from one span's system to the next."""
    trace_id = bytes(range(16, 32))
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i, (system, statement) in enumerate(
        (system, statement)
        for system in order
        for statement in ('SELECT name FROM users WHERE id = "x"', "SELECT name FROM users")
    ):
        sp = ss.spans.add(
            trace_id=trace_id, span_id=bytes([i + 1]) * 8, name="q", start_time_unix_nano=1, end_time_unix_nano=2
        )
        sp.attributes.add(key="db.query.text").value.string_value = statement
        sp.attributes.add(key="db.system").value.string_value = system
    value = req.SerializeToString()
    (trace,) = otlp.decode_traces(value).values()
    counts: dict[str, int] = {}
    got = otlp.encode_request(KeptWriter(PROTECTOR).batches(trace, SAMPLING, None, counts))
    want, want_counts = reference(value, PROTECTOR, None)
    assert otlp.parse_request(got) == otlp.parse_request(want) and counts == want_counts == {"rule:db-statement": 3}


def test_answers_given_without_privacy_are_not_reused_once_a_protector_is_given():
    """The memos belong to one protector: what privacy off let through as it is (an e-mail in an
    attribute) must be checked again, and tokenized, when the same writer protects."""
    trace_id = bytes(range(16, 32))
    span = Span(trace_id=trace_id, span_id=b"\x01" * 8, name="n", start_time_unix_nano=1, end_time_unix_nano=2)
    span.attributes.add(key="note").value.string_value = C.email
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.append(span)
    writer = KeptWriter(None)
    for protector, raw in ((None, True), (PROTECTOR, False), (None, True)):
        (trace,) = otlp.decode_traces(req.SerializeToString()).values()
        out = otlp.encode_request(writer.batches(trace, SAMPLING, None, {}, protector))
        assert (C.email.encode() in out) is raw


def test_a_link_or_event_no_output_can_carry_dead_letters_the_message_and_counts_nothing():
    """As the reference path: ``Malformed`` before any span is protected (no audit counts)."""
    trace_id = bytes(range(16, 32))
    ok = Span(trace_id=trace_id, span_id=b"\x01" * 8, name=C.email, start_time_unix_nano=1, end_time_unix_nano=2)
    bad = Span(trace_id=trace_id, span_id=b"\x02" * 8, name="x", start_time_unix_nano=1, end_time_unix_nano=2)
    bad.links.add(trace_id=b"\x01" * 3, span_id=b"\x01" * 8)
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.extend([ok, bad])
    (trace,) = otlp.decode_traces(req.SerializeToString()).values()
    counts: dict[str, int] = {}
    with pytest.raises(otlp.Malformed) as err:
        KeptWriter(PROTECTOR).batches(trace, SAMPLING, None, counts)
    assert err.value.reason == "invalid_span_id" and counts == {}


# ------------------------------------------------------------------ through the job
NOW = time.time_ns()


def test_follow_links_reads_the_links_of_spans_written_from_their_own_bytes():
    """``follow_links`` on OTLP kept as ``otlp_proto``: the kept span is not a dict any more, its
    link's trace ID still marks the linked trace, which is kept as context (adjusted count 0)."""
    consumer, producer = bytes(range(1, 17)), bytes(range(101, 117))
    cfg = make_config(
        ingest={"format": "otlp_proto"},
        emit={"format": "otlp_proto"},
        assemble={"root_quiet_gap_ms": 0},
        sampling={"follow_links": True, "policies": [{"name": "errors", "type": "status_code"}]},
    )
    job = Job(cfg, worker_id="t")

    def request(trace_id: bytes, error: bool, link: bytes | None = None) -> bytes:
        req = ExportTraceServiceRequest()
        sp = (
            req.resource_spans.add()
            .scope_spans.add()
            .spans.add(
                trace_id=trace_id,
                span_id=b"\x01" * 8,
                name="op",
                start_time_unix_nano=1 * MS,
                end_time_unix_nano=5 * MS,
            )
        )
        sp.status.code = 2 if error else 0
        if link is not None:
            sp.links.add(trace_id=link, span_id=b"\x02" * 8)
        return req.SerializeToString()

    job.ingest([Received(0, 0, consumer, request(consumer, True, link=producer))], 0)
    job.ingest([Received(0, 1, producer, request(producer, False))], 500 * MS)
    first = by_topic(job.collect(1200 * MS), cfg.topics.traces_kept.name)
    assert [r.key for r in first] == [consumer]
    second = by_topic(job.collect(1600 * MS), cfg.topics.traces_kept.name)
    assert [r.key for r in second] == [producer]
    summary = otlp.kept_summary(producer, second[0].value)
    assert summary["policy"] == "follow_links" and summary["adjusted_count"] == 0.0


HALF = {"name": "half", "type": "probabilistic", "sampling_percentage": 50}  # kept spans get a threshold
ALL = {"name": "all", "type": "always_sample"}


def _run(emit: str, privacy: bool, wire: bool, messages: list[Received], policy=HALF, max_record_bytes=None):
    cfg = make_config(
        ingest={"format": "otlp_proto"},
        emit={"format": emit},
        privacy={"enabled": privacy},
        sampling={"policies": [policy]},
    )
    job = Job(cfg, worker_id="t", protector=build_protector(cfg.privacy, ENV) if privacy else None)
    if not wire:
        job.kept_writer = None
    if max_record_bytes is not None:
        job.max_record_bytes = max_record_bytes
    job.ingest(messages, now_ns=NOW)
    out = job.collect(NOW + 10 * S, flush_all_windows=True)
    return out, cfg


def _traffic(big: bool) -> list[Received]:
    keyed, _ = peer_traffic.generate(60, start_ns=NOW - 5 * S, big_traces=1 if big else 0)
    msgs = [Received(0, i, key, value, ref=i) for i, (key, value) in enumerate(keyed.messages)]
    rng = random.Random(5)
    for i in range(5):  # the chaos suite's planted trace: canaries in every place a producer has text
        tid = rng.randbytes(16)
        msgs.append(Received(0, len(msgs), tid, fuzz.encode(canaries.planted_batch(rng, tid), "otlp_proto"), ref=i))
    return msgs


def _decoded(value: bytes, emit: str):
    return avro.decode(avro.KEPT_TRACE, value) if emit == "avro" else otlp.parse_request(value)


@pytest.mark.parametrize("emit", ["otlp_proto", "avro"])
@pytest.mark.parametrize("privacy", [True, False])
def test_the_job_writes_the_same_kept_traces_and_audits_as_the_reference_path(emit, privacy):
    msgs = _traffic(big=False)
    got, cfg = _run(emit, privacy, True, msgs)
    want, _ = _run(emit, privacy, False, msgs)
    kept = cfg.topics.traces_kept.name
    assert [(r.topic, r.key) for r in got.records] == [(r.topic, r.key) for r in want.records]
    assert len(by_topic(got, kept)) > 10
    for a, b in zip(by_topic(got, kept), by_topic(want, kept)):
        assert _decoded(a.value, emit) == _decoded(b.value, emit)
        if privacy:
            assert canaries.hits(a.value) == []
    audits = [avro.decode(PII_AUDIT, r.value)["counts"] for r in by_topic(got, cfg.topics.pii_audit.name)]
    assert audits == [avro.decode(PII_AUDIT, r.value)["counts"] for r in by_topic(want, cfg.topics.pii_audit.name)]
    assert (len(audits) > 0) == privacy


@pytest.mark.parametrize("privacy", [True, False])
def test_a_large_kept_trace_is_split_into_the_same_parts(privacy):
    msgs = _traffic(big=True)
    got, cfg = _run("otlp_proto", privacy, True, msgs, ALL, max_record_bytes=64 * 1024)
    want, _ = _run("otlp_proto", privacy, False, msgs, ALL, max_record_bytes=64 * 1024)
    a, b = by_topic(got, cfg.topics.traces_kept.name), by_topic(want, cfg.topics.traces_kept.name)
    parts = {}
    for r in a:
        parts[r.key] = parts.get(r.key, 0) + 1
    assert max(parts.values()) > 10  # the 5,000-span trace was kept and split
    assert [r.key for r in a] == [r.key for r in b]
    assert [otlp.parse_request(r.value) for r in a] == [otlp.parse_request(r.value) for r in b]
    assert all(len(r.value) <= 64 * 1024 for r in a)
