"""Kept Avro traces written from their messages' own fields (``pipeline.codecs.avro_kept``) against
the reference path (fastavro decode of every detail and resource, ``Protector.protect_span`` /
``protect_batch``, fastavro's encode of the whole ``KeptTrace``): **the same bytes** and the same
audit counts, for random spans full of PII, values of every union branch, hostile encodings
(split map blocks, non-minimal varints, repeated keys, details that do not decode), privacy on and
off, whole and split — and through the job on generated traffic with the chaos suite's canaries.

Before the writer the reference path was the only path: these tests pin the writer to it, so a
remembered answer or a copied value can never let out what protection would have changed."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.tracestate import with_threshold
from pipeline.chaos import canaries, fuzz
from pipeline.codecs import avro, avro_kept
from pipeline.codecs.avro_kept import AvroKeptWriter, Fallback
from pipeline.codecs.interface import KeptFacts
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from pipeline.job import Job, Received
from pipeline.privacy import PII_AUDIT, build_protector
from tests.support.jobs import S, make_config
from tests.support.jobs import records as by_topic

KEY = bytes(range(32))
ENV = {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()}
C = canaries.CHAOS
PROTECTOR = build_protector(make_config(privacy={"enabled": True}).privacy, ENV)
SAMPLING = {"sampling.policy": "p", "sampling.reason": "r", "sampling.adjusted_count": 20.0}
FACTS = KeptFacts(bytes(range(16, 32)), "p", "r", 20.0, 1_700_000_000 * S, False)
CODEC = avro.AvroCodec()

# ------------------------------------------------------------------ random batches
TEXTS = [
    "",
    "ok",
    "checkout.Handle",
    "GET /users/123456/orders",
    "SELECT * FROM orders WHERE id = 42 AND email = 'a@b.co'",
    "https://shop.example/cart?user=alice@example.com&x=1",
    f"user {C.email} paid with {C.card}",
    C.email,
    C.ip,
    C.jwt,
    C.api_key,
    f"id {C.uid}",
    "Bearer\u00a0abcdefgh12345678",
    "caf\u00e9 \u0663\u0663\u0663-\u0663\u0663-\u0663\u0663\u0663\u0663",
    "mysql",
    "redis",
    'SELECT name FROM users WHERE id = "x"',
    "HSET cart:u-11127 SKU-36075 1",
]
KEYS = [
    "http.route",
    "note",
    "k8s.pod.ip",
    "db.system",
    "db.system.name",
    "db.statement",
    "enduser.id",
    "user.email",
    "password",
    "url.full",
    "sampling.policy",
    "sampling.adjusted_count",
    "tailsift.detail_error",
    C.email,
    f"user.{C.uid}",
    "server.address",
]
TRACE_STATES = ["", "ot=th:8", "ot=th:8;rv:0123456789abcd", "shop=u:123", "a=b, c=d", "Bad Key=x"]
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.sampled_from(TEXTS),
    text,
    st.none(),
    st.booleans(),
    st.sampled_from([0, 7, -3, 63, -64, 64, 10**12, 4111111111111111, 2**63 - 1, -(2**63)]),
    st.sampled_from([0.5, -0.0, 4111111111111111.0, float("inf"), float("nan")]),
    st.sampled_from([b"", b"raw", C.email.encode(), b"\xff\xfe"]),
)
values = st.one_of(scalars, scalars, scalars, st.lists(scalars, max_size=3))
attributes = st.dictionaries(st.one_of(st.sampled_from(KEYS), text), values, max_size=5)


@st.composite
def spans(draw) -> dict:
    return {
        "span_id": draw(st.binary(min_size=8, max_size=8)),
        "parent_span_id": draw(st.one_of(st.none(), st.binary(min_size=8, max_size=8))),
        "name": draw(st.one_of(st.sampled_from(TEXTS), text)),
        "kind": draw(st.sampled_from(["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"])),
        "start_time_unix_nano": draw(st.sampled_from([1, 1_700_000_000 * S, 2**63 - 1])),
        "end_time_unix_nano": draw(st.sampled_from([2, 1_700_000_001 * S])),
        "status_code": draw(st.sampled_from(["UNSET", "OK", "ERROR"])),
        "trace_state": draw(st.sampled_from(TRACE_STATES)),
        "status_message": draw(st.sampled_from(TEXTS)),
        "attributes": draw(attributes),
        "events": [
            {"time_unix_nano": 5, "name": draw(st.sampled_from(TEXTS)), "attributes": draw(attributes)}
            for _ in range(draw(st.integers(0, 2)))
        ],
        "links": [
            {
                "trace_id": bytes(range(1, 17)),
                "span_id": bytes(range(1, 9)),
                "trace_state": draw(st.sampled_from(TRACE_STATES)),
                "attributes": draw(attributes),
            }
            for _ in range(draw(st.integers(0, 2)))
        ],
    }


@st.composite
def batches(draw) -> bytes:
    return fuzz.encode(
        {
            "trace_id": FACTS.trace_id,
            "service": draw(st.one_of(st.sampled_from(["checkout", C.email, ""]), text)),
            "spans": draw(st.lists(spans(), min_size=1, max_size=4)),
            "resource": draw(attributes),
            "scope_name": draw(st.sampled_from(["", "io.opentelemetry.http", C.email])),
        },
        "avro",
    )


def reference(value: bytes, protector, threshold: int | None) -> tuple[list[dict], dict]:
    """The kept path before the writer (``Protect._kept_batches`` with the Avro codec)."""
    kept, counts = CODEC.kept_batches(value, CODEC.decode_trace(value, FACTS.trace_id).handle), {}
    assert not kept.problem
    for b in kept.batches:
        for span in b["spans"]:
            if protector is not None:
                protector.protect_span(span, counts)
            span["attributes"].update(SAMPLING)
            if threshold is not None:
                span["trace_state"] = with_threshold(span["trace_state"], threshold)
        if protector is not None:
            protector.protect_batch(b, counts)
    return kept.batches, counts


def written(value: bytes, writer: AvroKeptWriter, threshold: int | None, protector=None) -> tuple[list[dict], dict]:
    counts: dict[str, int] = {}
    handle = CODEC.decode_trace(value, FACTS.trace_id).handle
    return writer.batches(
        handle, SAMPLING, threshold, counts, writer.protector if protector is None else protector
    ), counts


@pytest.mark.parametrize("privacy", [True, False])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=batches(), threshold=st.sampled_from([None, 0x80000000000000]), again=st.booleans())
def test_written_from_own_fields_is_the_reference_paths_bytes(privacy, value, threshold, again):
    protector = PROTECTOR if privacy else None
    writer = AvroKeptWriter(protector)
    if again:  # the second time every answer comes from the memos
        written(value, writer, threshold)
    got, counts = written(value, writer, threshold)  # fastavro's encoding: never sent the reference way
    want, want_counts = reference(value, protector, threshold)
    for part, parts in ((0, 1), (2, 3)):
        assert CODEC.encode_kept(FACTS, got, part, parts) == CODEC.encode_kept(FACTS, want, part, parts)
    assert counts == want_counts
    assert list(counts) == list(want_counts)  # the audit map's order too: its record's bytes
    if privacy:
        assert canaries.hits(CODEC.encode_kept(FACTS, got)) == canaries.hits(CODEC.encode_kept(FACTS, want))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=batches(), cut=st.integers(0, 3))
def test_a_record_of_written_and_decoded_batches_is_fastavros_record(value, cut):
    """Mixed: some messages of a trace written here, others the reference way (fastavro per item)."""
    got, _ = written(value, AvroKeptWriter(PROTECTOR), None)
    want, _ = reference(value, PROTECTOR, None)
    mixed = (want + got + want)[cut:]
    assert CODEC.encode_kept(FACTS, mixed) == CODEC.encode_kept(FACTS, (want + want + want)[cut:])


def test_a_clean_attribute_keeps_its_bytes_and_pii_is_rewritten():
    span = {
        "span_id": b"\x01" * 8,
        "parent_span_id": None,
        "name": "checkout.Handle",
        "kind": "SERVER",
        "start_time_unix_nano": 1,
        "end_time_unix_nano": 2,
        "status_code": "UNSET",
        "trace_state": "",
        "status_message": "",
        "attributes": {"http.route": "/cart", "note": f"mail {C.email}"},
        "events": [],
        "links": [],
    }
    value = fuzz.encode({"trace_id": FACTS.trace_id, "service": "svc", "spans": [span], "resource": {}}, "avro")
    got, counts = written(value, AvroKeptWriter(PROTECTOR), None)
    out = CODEC.encode_kept(FACTS, got)
    assert avro_kept.entry("http.route", "/cart") in out
    assert C.email.encode() not in out and counts == {"detector:email": 1}
    (batch,) = avro.decode(avro.KEPT_TRACE, out)["batches"]
    assert batch["spans"][0]["attributes"] == {
        "http.route": "/cart",
        "note": f"mail {PROTECTOR.tokenizer.token(C.email)}",
        **SAMPLING,
    }


def _detail(*blocks: bytes) -> bytes:
    """A SpanDetail: empty status message, the given attribute map bytes, no events, no links."""
    return b"\x00" + b"".join(blocks) + b"\x00\x00"


def _batch_with_detail(detail: bytes) -> bytes:
    span = {
        "span_id": b"\x01" * 8,
        "parent_span_id": None,
        "name": "n",
        "kind": "INTERNAL",
        "start_time_unix_nano": 1,
        "end_time_unix_nano": 2,
        "status_code": "UNSET",
        "trace_state": "",
        "detail": detail,
    }
    return avro.encode_span_batch({"trace_id": FACTS.trace_id, "service": "svc", "spans": [span]})


E1, E2 = avro_kept.entry("note", "a"), avro_kept.entry("user.email", C.email)


@pytest.mark.parametrize(
    "detail",
    [
        _detail(b"\x04", E1, E2, b"\x00"),  # canonical
        _detail(b"\x02", E1, b"\x02", E2, b"\x00"),  # two blocks
        _detail(b"\x01", bytes([len(E1) * 2]), E1, b"\x02", E2, b"\x00"),  # a negative count with its size
        _detail(b"\x84\x00", E1, E2, b"\x00"),  # a non-minimal count varint
    ],
)
@pytest.mark.parametrize("privacy", [True, False])
def test_any_encoding_of_the_same_detail_gives_fastavros_canonical_bytes(detail, privacy):
    """fastavro reads each of these maps alike and writes one block; so does the writer."""
    value = _batch_with_detail(detail)
    protector = PROTECTOR if privacy else None
    got, counts = written(value, AvroKeptWriter(protector), None)
    want, want_counts = reference(value, protector, None)
    assert CODEC.encode_kept(FACTS, got) == CODEC.encode_kept(FACTS, want) and counts == want_counts


@pytest.mark.parametrize(
    "detail",
    [
        _detail(b"\x04", E1, E1, b"\x00"),  # a repeated key: the reference path keeps one
        _detail(b"\x02", E1[:-1] + b"\x03"),  # a boolean byte of 3 (note: "a" → bool branch)
        b"\x00\x02" + E1,  # truncated
        _detail(b"\x02", E1, b"\x00") + b"\x00",  # a trailing byte
        b"\x00\x02\x08\xff\xfe\x08\x00\x00\x00\x00",  # a key that is not UTF-8
    ],
)
def test_a_detail_the_writer_cannot_read_as_fastavro_would_goes_the_reference_way(detail):
    value = _batch_with_detail(detail)
    counts: dict[str, int] = {}
    with pytest.raises(Fallback):
        AvroKeptWriter(PROTECTOR).batches(CODEC.decode_trace(value, FACTS.trace_id).handle, SAMPLING, None, counts)
    assert counts == {}


@pytest.mark.parametrize("order", [("mysql", "postgresql", "redis"), ("postgresql", "redis", "mysql")])
def test_a_statement_is_judged_with_its_own_maps_db_system(order):
    """The same statement is clean beside one ``db.system`` and not beside another: the remembered
    answer must not carry over from one span's system to the next."""
    span_list = []
    for i, system in enumerate(s for s in order for _ in range(2)):
        statement = ('SELECT name FROM users WHERE id = "x"', "SELECT name FROM users")[i % 2]
        span_list.append(
            {
                "span_id": bytes([i + 1]) * 8,
                "parent_span_id": None,
                "name": "q",
                "kind": "CLIENT",
                "start_time_unix_nano": 1,
                "end_time_unix_nano": 2,
                "status_code": "UNSET",
                "trace_state": "",
                "status_message": "",
                "attributes": {"db.statement": statement, "db.system": system},
                "events": [],
                "links": [],
            }
        )
    value = fuzz.encode({"trace_id": FACTS.trace_id, "service": "svc", "spans": span_list, "resource": {}}, "avro")
    got, counts = written(value, AvroKeptWriter(PROTECTOR), None)
    want, want_counts = reference(value, PROTECTOR, None)
    assert CODEC.encode_kept(FACTS, got) == CODEC.encode_kept(FACTS, want)
    assert counts == want_counts == {"rule:db-statement": 3}


def test_answers_given_without_privacy_are_not_reused_once_a_protector_is_given():
    value = _batch_with_detail(_detail(b"\x02", E2, b"\x00"))
    writer = AvroKeptWriter(None)
    for protector, raw in ((None, True), (PROTECTOR, False), (None, True)):
        handle = CODEC.decode_trace(value, FACTS.trace_id).handle
        out = CODEC.encode_kept(FACTS, writer.batches(handle, SAMPLING, None, {}, protector))
        assert (C.email.encode() in out) is raw


# ------------------------------------------------------------------ through the job
NOW = time.time_ns()
HALF = {"name": "half", "type": "probabilistic", "sampling_percentage": 50}
ALL = {"name": "all", "type": "always_sample"}


def _traffic() -> list[Received]:
    gen = TraceGenerator(GeneratorConfig(seed=3))
    msgs = []
    for i in range(40):
        tr = gen.trace(NOW - 30 * S + i * 1_000_000)
        msgs += [Received(0, len(msgs), key, value, ref=i) for key, value in tr.messages()]
    rng = random.Random(5)
    for i in range(5):  # the chaos suite's planted trace: canaries in every place a producer has text
        tid = rng.randbytes(16)
        msgs.append(Received(0, len(msgs), tid, fuzz.encode(canaries.planted_batch(rng, tid), "avro"), ref=i))
    return msgs


def _run(privacy: bool, wire: bool, messages: list[Received], policy=HALF, max_record_bytes=None):
    cfg = make_config(
        ingest={"format": "avro"},
        emit={"format": "avro"},
        privacy={"enabled": privacy},
        sampling={"policies": [policy], "follow_links": True},
    )
    job = Job(cfg, worker_id="t", protector=build_protector(cfg.privacy, ENV) if privacy else None)
    assert job.avro_kept_writer is not None
    if not wire:
        job.avro_kept_writer = None
    if max_record_bytes is not None:
        job.max_record_bytes = max_record_bytes
    job.ingest(messages, now_ns=NOW)
    out = job.collect(NOW + 10 * S, flush_all_windows=True)
    return out, cfg


@pytest.mark.parametrize("privacy", [True, False])
def test_the_job_writes_the_same_records_as_the_reference_path(privacy):
    """Every record the job writes (kept traces, audits, decisions, windows) byte for byte."""
    msgs = _traffic()
    got, cfg = _run(privacy, True, msgs)
    want, _ = _run(privacy, False, msgs)
    assert [(r.topic, r.key, r.value) for r in got.records] == [(r.topic, r.key, r.value) for r in want.records]
    kept = by_topic(got, cfg.topics.traces_kept.name)
    assert len(kept) > 10
    audits = by_topic(got, cfg.topics.pii_audit.name)
    assert (len(audits) > 0) == privacy
    if privacy:
        assert all(canaries.hits(r.value) == [] for r in kept)
        assert sum(sum(avro.decode(PII_AUDIT, r.value)["counts"].values()) for r in audits) > 100


@pytest.mark.parametrize("privacy", [True, False])
def test_a_large_kept_trace_is_split_into_the_same_parts(privacy):
    msgs = _traffic()
    got, cfg = _run(privacy, True, msgs, ALL, max_record_bytes=4 * 1024)
    want, _ = _run(privacy, False, msgs, ALL, max_record_bytes=4 * 1024)
    a = by_topic(got, cfg.topics.traces_kept.name)
    assert len({r.key for r in a}) < len(a)  # some traces were split
    assert [(r.key, r.value) for r in a] == [(r.key, r.value) for r in by_topic(want, cfg.topics.traces_kept.name)]
    assert all(len(r.value) <= 4 * 1024 for r in a)
