"""Kept Avro spans written in Rust (``pipeline.codecs.avro_kept_native``, ``native/src/avro_kept.rs``)
against ``AvroKeptWriter`` (itself held to the reference path by ``test_avro_kept.py``): for random
batches full of PII, values of every union branch, hostile and mutated details, privacy on and off,
with and without a threshold, fresh and from the memo — **the same bytes**, the same audit counts
in the same order; and where ``AvroKeptWriter`` sends a message the reference way, the native
writer hands it back (None) instead of writing anything.

Before it, every kept Avro span was decoded by fastavro into dicts and written by Python code per
span and per attribute (~26 % of the job core on ``make bench``'s traffic)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codecs import avro, avro_kept_native
from pipeline.codecs.avro_kept import AvroKeptWriter, Fallback, entry
from pipeline.codecs.avro_kept_native import NativeAvroKeptWriter
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from pipeline.job import Job
from pipeline.privacy import build_protector
from tests.unit.test_avro_kept import (
    CODEC,
    E1,
    E2,
    ENV,
    FACTS,
    HALF,
    NOW,
    PROTECTOR,
    SAMPLING,
    S,
    _batch_with_detail,
    _detail,
    _traffic,
    batches,
    make_config,
)

pytestmark = pytest.mark.skipif(not avro_kept_native.AVAILABLE, reason="the native core is not built")
TH = 0x80000000000000


def python_side(value: bytes, writer: AvroKeptWriter, threshold, sampling=SAMPLING):
    """AvroKeptWriter's batch and counts, or None where it sends the message the reference way."""
    counts: dict[str, int] = {}
    handle = CODEC.decode_trace(value, FACTS.trace_id).handle
    try:
        return writer.batches(handle, sampling, threshold, counts), counts
    except Fallback:
        assert counts == {}
        return None


def native_side(value: bytes, native: NativeAvroKeptWriter, threshold, sampling=SAMPLING):
    counts: dict[str, int] = {}
    got = native.batches(value, FACTS.trace_id, sampling, threshold, counts)
    if got is None:
        assert counts == {}
        return None
    return got, counts


def same(value: bytes, protector, threshold, native=None, sampling=SAMPLING) -> bool:
    """Both writers on one message: the same record bytes and counts, or both hand it back.
    True when it was written."""
    native = native or NativeAvroKeptWriter(AvroKeptWriter(protector))
    want = python_side(value, AvroKeptWriter(protector), threshold, sampling)
    got = native_side(value, native, threshold, sampling)
    if want is None:
        assert got is None
        return False
    assert got is not None
    (got_batches, got_counts), (want_batches, want_counts) = got, want
    for part, parts in ((0, 1), (1, 2)):
        assert CODEC.encode_kept(FACTS, got_batches, part, parts) == CODEC.encode_kept(FACTS, want_batches, part, parts)
    assert [s.link_trace_ids for b in got_batches for s in b["spans"]] == [
        s.link_trace_ids for b in want_batches for s in b["spans"]
    ]
    assert got_counts == want_counts and list(got_counts) == list(want_counts)  # the audit record's order
    return True


@pytest.mark.parametrize("privacy", [True, False])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=batches(), threshold=st.sampled_from([None, TH]), again=st.booleans())
def test_native_spans_are_avro_kept_writers_bytes(privacy, value, threshold, again):
    protector = PROTECTOR if privacy else None
    native = NativeAvroKeptWriter(AvroKeptWriter(protector))
    if again:  # the second time every answer comes from the Rust memo
        native_side(value, native, threshold)
    assert same(value, protector, threshold, native)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=batches(), data=st.data())
def test_mutated_details_are_written_alike_or_handed_back(value, data):
    """Bytes changed inside a span's detail (the batch still decodes: the detail is opaque at
    ingest): wherever ``AvroKeptWriter`` reads them, the native writer writes the same; wherever
    it would go the reference way, the native writer hands the message back."""
    batch = CODEC.decode_trace(value, FACTS.trace_id).handle
    span = batch["spans"][data.draw(st.integers(0, len(batch["spans"]) - 1))]
    detail = bytearray(span["detail"] or b"\x00\x00\x00\x00")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(detail) - 1))
        detail[i] = data.draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 10, 12, 0x7F, 0x80, 0xFF, detail[i] ^ 1]))
    if data.draw(st.booleans()):
        detail = detail[: data.draw(st.integers(0, len(detail)))]
    span["detail"] = bytes(detail)
    for s in batch["spans"]:
        s.pop("service", None)
    same(avro.encode_span_batch(batch), PROTECTOR, data.draw(st.sampled_from([None, TH])))


@pytest.mark.parametrize(
    "detail",
    [
        _detail(b"\x04", E1, E2, b"\x00"),  # canonical
        _detail(b"\x02", E1, b"\x02", E2, b"\x00"),  # two blocks
        _detail(b"\x01", bytes([len(E1) * 2]), E1, b"\x02", E2, b"\x00"),  # a negative count with its size
        _detail(b"\x84\x00", E1, E2, b"\x00"),  # a non-minimal count varint
        _detail(b"\x04", E1, E1, b"\x00"),  # a repeated key: the reference way
        _detail(b"\x02", E1[:-1] + b"\x03"),  # a boolean byte of 3
        b"\x00\x02" + E1,  # truncated
        _detail(b"\x02", E1, b"\x00") + b"\x00",  # a trailing byte
        b"\x00\x02\x08\xff\xfe\x08\x00\x00\x00\x00",  # a key that is not UTF-8
        _detail(b"\x02", b"\x02k\x0c\x02\x0c\x00\x00", b"\x00"),  # a nested array
        _detail(b"\x02", b"\x02k\x0c\x02\x02\x03\x00", b"\x00"),  # an array boolean of 3
        _detail(b"\x02", b"\x02k\x80\x08", b"\x00"),  # a two-byte union index
        _detail(b"\x02", b"\x02k\x04" + b"\xff" * 10 + b"\x01", b"\x00"),  # a long past 10 bytes
        _detail(b"\x01\x00", b"\x00"),  # a block count of -0 ... with a size
    ],
)
@pytest.mark.parametrize("privacy", [True, False])
def test_hostile_details_are_written_alike_or_handed_back(detail, privacy):
    same(_batch_with_detail(detail), PROTECTOR if privacy else None, TH)


def test_a_statement_is_judged_with_its_own_maps_db_system_from_the_memo():
    """One writer over spans whose equal statements sit beside different ``db.system``s: the
    remembered in-context answer is keyed by the system entries too."""
    native = NativeAvroKeptWriter(AvroKeptWriter(PROTECTOR))
    for system in ("mysql", "postgresql", "redis", "mysql"):
        detail = _detail(
            b"\x04",
            entry("db.statement", 'SELECT name FROM users WHERE id = "x"'),
            entry("db.system", system),
            b"\x00",
        )
        assert same(_batch_with_detail(detail), PROTECTOR, None, native)


def test_a_new_protector_starts_the_memo_over():
    value = _batch_with_detail(_detail(b"\x02", E2, b"\x00"))
    native = NativeAvroKeptWriter(AvroKeptWriter(None))
    for protector, raw in ((None, True), (PROTECTOR, False), (None, True)):
        counts: dict[str, int] = {}
        out = CODEC.encode_kept(FACTS, native.batches(value, FACTS.trace_id, SAMPLING, None, counts, protector))
        assert (E2 in out) is raw


def test_generated_traffic_is_written_natively_and_alike():
    """The bench generator's traces (URLs, statements, cards, e-mails): every message written in
    Rust (none handed back), the same bytes and counts as ``AvroKeptWriter``, with a memo that
    is cleared (a small memo_size) along the way."""
    gen = TraceGenerator(GeneratorConfig(seed=11))
    writer = AvroKeptWriter(PROTECTOR, memo_size=64)
    native = NativeAvroKeptWriter(writer)
    rng = random.Random(3)
    n = 0
    for i in range(60):
        for _, value in gen.trace(1_700_000_000_000_000_000 + i * 1_000_000).messages():
            th = rng.choice([None, TH])
            want = python_side(value, AvroKeptWriter(PROTECTOR), th)
            got = native_side(value, native, th)
            assert want is not None and got is not None
            (gb, gc), (wb, wc) = got, want
            assert CODEC.encode_kept(FACTS, gb) == CODEC.encode_kept(FACTS, wb)
            assert list(gc.items()) == list(wc.items())
            n += 1
    assert n > 100


@pytest.mark.parametrize("privacy", [True, False])
def test_the_job_writes_the_same_records_natively(privacy):
    """Through the job (native core, Avro in and out): every record — kept traces, audits,
    decisions, windows — byte for byte as with the Python writer alone. The core is named: under
    ``TAILSIFT_AUTO_CORE=python`` (``make test-python-core``) auto builds no native writer, and this
    test failed there on its own premise (``job.native_kept`` None)."""
    msgs = _traffic()
    cfg = make_config(
        job={"core": "native"},
        ingest={"format": "avro"},
        emit={"format": "avro"},
        privacy={"enabled": privacy},
        sampling={"policies": [HALF], "follow_links": True},
    )

    def run(native_writer: bool):  # noqa: ANN202
        job = Job(cfg, worker_id="t", protector=build_protector(cfg.privacy, ENV) if privacy else None)
        assert isinstance(job.native_kept, NativeAvroKeptWriter)
        if not native_writer:  # AvroKeptWriter writes every kept span
            job.native_kept = None
        job.ingest(msgs, now_ns=NOW)
        return job.collect(NOW + 10 * S, flush_all_windows=True)

    job_native, want = run(True), run(False)
    assert [(r.topic, r.key, r.value) for r in job_native.records] == [(r.topic, r.key, r.value) for r in want.records]
