"""The native kept writer (``native/src/kept.rs`` behind ``pipeline.codecs.otlp_kept_native``)
against ``KeptWriter`` (``job.core: python``'s kept path) and the reference path: **the same
bytes** and the same audit counts, in the same order — for random spans full of PII and values
the dict shape cannot carry, for hostile encodings of them (fields out of order, repeated,
non-minimal varints, unknown fields, known fields of another wire type, defaults written out,
oneof members replacing each other), privacy on and off, with and without a threshold; and the
job's records (kept traces, audits, dead letters) byte for byte on generated traffic with the
chaos suite's canaries.

Before the native writer, ``Decide._decide`` parsed every kept message with protobuf
(``codec.decode_trace``) and ``KeptWriter`` walked each kept span in Python: these tests pin the
native writer to that path."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pipeline.chaos import canaries, fuzz
from pipeline.codecs import otlp
from pipeline.codecs.interface import Malformed
from pipeline.codecs.otlp_kept import KeptWriter
from pipeline.codecs.otlp_kept_native import AVAILABLE, NativeKeptWriter, span_header
from pipeline.job import Job, Received
from pipeline.peerbench import traffic as peer_traffic
from pipeline.privacy import build_protector
from tests.support.jobs import S, make_config
from tests.unit.test_kept_wire import ENV, PROTECTOR, SAMPLING, C, reference, requests

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="the native core is not built")
TRACE_ID = bytes(range(16, 32))
THRESHOLDS = st.sampled_from([None, 0x80000000000000, 0xFFF00000000000])

# ------------------------------------------------------------------ hostile re-encoding
# (message, field number) → the message type of a length-delimited field (others are scalars)
SUB = {
    ("Request", 1): "ResourceSpans",
    ("ResourceSpans", 1): "Resource",
    ("ResourceSpans", 2): "ScopeSpans",
    ("Resource", 1): "KeyValue",
    ("ScopeSpans", 1): "Scope",
    ("ScopeSpans", 2): "Span",
    ("Scope", 3): "KeyValue",
    ("Span", 9): "KeyValue",
    ("Span", 11): "Event",
    ("Span", 13): "Link",
    ("Span", 15): "Status",
    ("Event", 3): "KeyValue",
    ("Link", 4): "KeyValue",
    ("KeyValue", 2): "AnyValue",
    ("AnyValue", 5): "ArrayValue",
    ("AnyValue", 6): "KvList",
    ("ArrayValue", 1): "AnyValue",
    ("KvList", 1): "KeyValue",
}
# defaults a producer may write out (proto3 leaves them out): (field number, wire bytes after the tag)
DEFAULTS = {
    "Span": [(6, 0, b"\x00"), (5, 2, b"\x00"), (3, 2, b"\x00"), (10, 0, b"\x00"), (7, 1, bytes(8)), (16, 5, bytes(4))],
    "Status": [(3, 0, b"\x00"), (2, 2, b"\x00")],
    "Event": [(1, 1, bytes(8)), (2, 2, b"\x00"), (4, 0, b"\x00")],
    "Link": [(3, 2, b"\x00"), (5, 0, b"\x00"), (6, 5, bytes(4))],
    "KeyValue": [(1, 2, b"\x00")],
    "AnyValue": [(3, 0, b"\x05"), (1, 2, b"\x01x")],  # a second oneof member
}


def _varint(n: int, extra: int = 0) -> bytes:
    """``n`` as a varint, ``extra`` bytes longer than it needs (a non-minimal encoding)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n == 0 and extra == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)
        if n == 0:
            extra -= 1
            if extra == 0:
                out.append(0)
                return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n & ((1 << 64) - 1), i


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(number, wire type, value) of a message the Python parser accepted (no groups in them)."""
    out, i = [], 0
    while i < len(buf):
        tag, i = _read_varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        elif wt == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i : i + n], i + n
        else:
            raise ValueError("a group")
        out.append((num, wt, v))
    return out


def hostile(draw, buf: bytes, message: str = "Request") -> bytes:
    """``buf`` encoded again the way no SDK writes it but protobuf reads: each message's fields
    perhaps shuffled, repeated, joined by unknown fields (groups too) and written-out defaults,
    with non-minimal tags, lengths and varints."""
    rare = st.integers(0, 9).map(lambda n: n == 0)
    fields = _fields(buf)
    if draw(rare):
        fields = draw(st.permutations(fields))
    out = bytearray()
    for num, wt, v in fields:
        extra = 1 if draw(rare) else 0
        if wt == 2 and (message, num) in SUB:
            v = hostile(draw, v, SUB[(message, num)])
        copies = 2 if draw(rare) else 1
        for _ in range(copies):
            out += _varint(num << 3 | wt, extra)
            if wt == 0:
                out += _varint(v, 1 if draw(rare) else 0)  # type: ignore[arg-type]
            elif wt == 2:
                out += _varint(len(v), 1 if draw(rare) else 0) + v  # type: ignore[arg-type]
            else:
                out += v  # type: ignore[operator]
    if draw(rare):  # an unknown field: varint, bytes, fixed, a group
        out += draw(
            st.sampled_from(
                [b"\xf8\x06\x01", b"\x9a\x06\x02ab", b"\xfd\x06\x00\x00\x00\x01", b"\xab\x06\x08\x01\xac\x06"]
            )
        )
    if message in DEFAULTS and draw(rare):
        num, wt, payload = draw(st.sampled_from(DEFAULTS[message]))
        out += _varint(num << 3 | wt) + payload
    if message == "Span" and draw(rare):  # a known field of another wire type: an unknown field to protobuf
        out += b"\x28\x05"  # name (5) as a varint
    return bytes(out)


# ------------------------------------------------------------------ the writers side by side
WRITERS = {privacy: NativeKeptWriter(KeptWriter(PROTECTOR if privacy else None)) for privacy in (True, False)}


def both(value: bytes, privacy: bool, threshold: int | None, native: NativeKeptWriter | None = None):
    """(native batches or None, its counts), (KeptWriter's batches or the Malformed it raised, counts)."""
    protector = PROTECTOR if privacy else None
    native = native or WRITERS[privacy]
    got_counts: dict[str, int] = {}
    got = native.batches(value, TRACE_ID, SAMPLING, threshold, got_counts, protector)
    want_counts: dict[str, int] = {}
    trace = otlp.decode_traces(value)[TRACE_ID]
    try:
        want = KeptWriter(protector).batches(trace, SAMPLING, threshold, want_counts)
    except Malformed as exc:
        want = exc
    return (got, got_counts), (want, want_counts)


def assert_same(value: bytes, privacy: bool, threshold: int | None, native: NativeKeptWriter | None = None) -> None:
    (got, got_counts), (want, want_counts) = both(value, privacy, threshold, native)
    if isinstance(want, Malformed):
        assert got is None  # the job takes the Python path, which dead-letters it
        return
    assert got is not None, "a message the Python writer takes was refused"
    assert otlp.encode_request(got) == otlp.encode_request(want)
    assert [[s.link_trace_ids for s in b["spans"]] for b in got] == [
        [s.link_trace_ids for s in b["spans"]] for b in want
    ]
    assert list(got_counts.items()) == list(want_counts.items())


@pytest.mark.parametrize("privacy", [True, False])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=requests(), threshold=THRESHOLDS)
def test_native_writes_the_bytes_keptwriter_writes(privacy, value, threshold):
    assert_same(value, privacy, threshold)
    want, want_counts = reference(value, PROTECTOR if privacy else None, threshold)
    (got, got_counts), _ = both(value, privacy, threshold)
    assert otlp.parse_request(otlp.encode_request(got)) == otlp.parse_request(want) and got_counts == want_counts


@pytest.mark.parametrize("privacy", [True, False])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=requests(), threshold=THRESHOLDS, data=st.data())
def test_hostile_encodings_are_written_as_keptwriter_writes_them(privacy, value, threshold, data):
    mutated = hostile(data.draw, value)
    try:
        traces = otlp.decode_traces(mutated)
    except Exception:  # noqa: BLE001 - protobuf refuses it (ingest would have dead-lettered it)
        traces = {}
    assume(TRACE_ID in traces)
    assert_same(mutated, privacy, threshold)


# ------------------------------------------------------------------ spans rebuilt in Rust
# Spans whose only change is in their own attributes (a tokenized e-mail on an otherwise clean
# span: the peer benchmark's every kept root span): Rust writes them as ``KeptWriter._rebuilt``
# does, from Python's ``_attribute`` answers. Mostly clean texts, so most spans reach that path;
# keys that leave under another key, merge, read their map's context or are tailsift's own, PII
# in events and links, values the dict shape changes — each must still be written as the Python
# writer writes it.
CLEAN = ["ok", "checkout.Handle", "/api/v1/items", "GET /health", ""]
PII_VALUES = [C.email, C.ip, C.uid, C.card, C.api_key, f"user {C.email}", "alice@example.com"]
REBUILD_KEYS = [
    "note",
    "http.route",
    "enduser.id",
    "user.email",
    "password",
    "client.address",
    "url.full",
    "db.system",
    "db.statement",
    "k8s.pod.name",
    "sampling.policy",
    "tailsift.x",
    C.email,  # a key the detectors tokenize: it leaves under another key
    f"user.{C.uid}",
]
rebuild_values = st.one_of(
    st.sampled_from(CLEAN + PII_VALUES),
    st.sampled_from([0, 7, 10**12, 4111111111111111, True, 0.5, b"raw", C.email.encode()]),
    st.lists(st.sampled_from(CLEAN + PII_VALUES), max_size=2),
)


def _attrs(target, pairs) -> None:
    for key, value in pairs:
        otlp.py_to_value(value, target.add(key=key).value)


@st.composite
def pii_attribute_spans(draw) -> Span:
    sp = Span(
        trace_id=TRACE_ID,
        span_id=draw(st.binary(min_size=8, max_size=8).filter(any)),
        parent_span_id=draw(st.sampled_from([b"", b"\x02" * 8])),
        name=draw(st.sampled_from(CLEAN[:4] * 3 + [C.email])),
        kind=draw(st.integers(0, 5)),
        start_time_unix_nano=1_000,
        end_time_unix_nano=2_000,
        trace_state=draw(st.sampled_from(["", "ot=th:8", "shop=u:123"])),
        flags=draw(st.sampled_from([0, 0x301])),
    )
    if draw(st.booleans()):
        sp.status.code = draw(st.integers(0, 2))
        sp.status.message = draw(st.sampled_from(["", "ok", "ok", C.email]))
    pair = st.tuples(st.sampled_from(REBUILD_KEYS), rebuild_values)
    unique = draw(st.integers(0, 4)) > 0  # mostly distinct keys: a repeated one takes _rebuilt
    _attrs(sp.attributes, draw(st.lists(pair, min_size=1, max_size=6, unique_by=(lambda p: p[0]) if unique else None)))
    clean = st.tuples(st.sampled_from(["note", "http.route"]), st.sampled_from(CLEAN))
    for _ in range(draw(st.integers(0, 1))):
        ev = sp.events.add(time_unix_nano=1_500, name=draw(st.sampled_from(CLEAN)))
        _attrs(ev.attributes, draw(st.lists(st.one_of(clean, clean, pair), max_size=2)))
    for _ in range(draw(st.integers(0, 1))):
        ln = sp.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)))
        _attrs(ln.attributes, draw(st.lists(st.one_of(clean, clean, pair), max_size=2)))
    return sp


@st.composite
def pii_attribute_requests(draw) -> bytes:
    return _request(*draw(st.lists(pii_attribute_spans(), min_size=1, max_size=4)))


@pytest.mark.parametrize("privacy", [True, False])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=pii_attribute_requests(), threshold=THRESHOLDS, data=st.data())
def test_spans_rebuilt_in_rust_are_the_bytes_keptwriter_writes(privacy, value, threshold, data):
    """The same bytes and audit counts, in order, as ``KeptWriter`` (and the same request as the
    reference path) — written fresh and with the answers remembered, plain and re-encoded."""
    native = NativeKeptWriter(KeptWriter(PROTECTOR if privacy else None))
    assert_same(value, privacy, threshold, native)  # every answer asked
    assert_same(value, privacy, threshold, native)  # every answer remembered
    want, want_counts = reference(value, PROTECTOR if privacy else None, threshold)
    (got, got_counts), _ = both(value, privacy, threshold, native)
    assert otlp.parse_request(otlp.encode_request(got)) == otlp.parse_request(want) and got_counts == want_counts
    mutated = hostile(data.draw, value)
    try:
        traces = otlp.decode_traces(mutated)
    except Exception:  # noqa: BLE001 - protobuf refuses it (ingest would have dead-lettered it)
        traces = {}
    if TRACE_ID in traces:
        assert_same(mutated, privacy, threshold, native)


class _Rebuilt(NativeKeptWriter):
    """Counts the spans Rust rebuilt (``[wire_span, counts]``) and those it handed to ``_rebuilt``."""

    def __init__(self, writer):
        super().__init__(writer)
        self.kinds: list[str] = []
        inner = self._spans

        class Spy:
            def write(spy, *args):
                out = inner.write(*args)
                for _, _, spans in out or ():
                    self.kinds += [
                        "rust" if type(s) is list else "python" if type(s) is tuple else "plain" for s in spans
                    ]
                return out

            def __getattr__(spy, name):
                return getattr(inner, name)

        self._spans = Spy()


def test_a_span_whose_only_pii_is_an_attribute_value_is_rebuilt_in_rust():
    """The peer benchmark's kept root span: an e-mail in ``enduser.id`` on an otherwise clean
    span. Before, Rust handed it back as changed and ``KeptWriter._rebuilt`` decoded it to dicts,
    protected and re-encoded it in Python (a third of the kept path's CPU); now Rust writes the
    same bytes from the tokenized value Python answers with, once per distinct value, and counts
    the same. An e-mail in an event still takes ``_rebuilt``."""
    native = _Rebuilt(KeptWriter(PROTECTOR))
    root = _span(0, **{"http.route": "/cart", "enduser.id": C.email, "http.response.status_code": 200})
    child = _span(1, note="ok")
    with_event = _span(2, note="ok")
    with_event.events.add(time_unix_nano=1, name="e").attributes.add(key="user.email").value.string_value = C.email
    value = _request(root, child, with_event)
    assert_same(value, True, 0x80000000000000, native)
    assert native.kinds == ["rust", "plain", "python"]
    (got, counts), _ = both(value, True, None, native)
    assert list(counts.items()) == [("rule:user-id", 1), ("rule:user-email", 1)]
    assert C.email.encode() not in otlp.encode_request(got)


def _request(*spans: Span, service: str = "svc") -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    rs.scope_spans.add().spans.extend(spans)
    return req.SerializeToString()


def _span(i: int, **attrs) -> Span:
    sp = Span(trace_id=TRACE_ID, span_id=bytes([i + 1]) * 8, name="op", start_time_unix_nano=1, end_time_unix_nano=2)
    for k, v in attrs.items():
        otlp.py_to_value(v, sp.attributes.add(key=k).value)
    return sp


class _Counting(NativeKeptWriter):
    """Counts the questions the native side asks."""

    asked: list

    def _answer(self, questions):
        self.asked.extend(questions)
        return super()._answer(questions)


def test_each_distinct_input_is_asked_once_and_a_long_one_each_time():
    """The native memo holds answers by exact input: a second trace with the same values asks
    nothing; a value over the entry bound (512 bytes) is not remembered and asked again."""
    native = _Counting(KeptWriter(PROTECTOR))
    native.asked = []
    long = "x" * 600
    value = _request(_span(0, note="ok", big=long), _span(1, note="ok"))
    both(value, True, None, native)
    first = list(native.asked)
    assert sorted(kind for kind, _, _ in first) == [0, 3, 3]  # the name, two distinct attributes
    native.asked.clear()
    both(value, True, None, native)
    assert [(kind, len(a)) for kind, a, _ in native.asked] == [(3, len(a)) for kind, a, _ in first if len(a) > 512]


def test_the_memo_is_bounded_in_count():
    native = NativeKeptWriter(KeptWriter(PROTECTOR, memo_size=8))
    for i in range(50):
        both(_request(_span(0, note=f"value {i}")), True, None, native)
    assert 0 < len(native._spans) <= 6 * 8  # per kind of question, cleared when full


def test_answers_belong_to_one_protector():
    """Privacy off lets an e-mail through as it is; the same writer given a protector must ask
    again and tokenize it."""
    native = NativeKeptWriter(KeptWriter(None))
    value = _request(_span(0, note=canaries.CHAOS.email))
    for protector, raw in ((None, True), (PROTECTOR, False), (None, True)):
        counts: dict[str, int] = {}
        out = otlp.encode_request(native.batches(value, TRACE_ID, SAMPLING, None, counts, protector))
        assert (canaries.CHAOS.email.encode() in out) is raw
        assert bool(counts) is not raw


def test_a_span_with_a_link_no_output_can_carry_hands_the_message_to_the_python_path():
    bad = _span(1)
    bad.links.add(trace_id=b"\x01" * 3, span_id=b"\x01" * 8)
    (got, counts), (want, _) = both(_request(_span(0, note=canaries.CHAOS.email), bad), True, None)
    assert got is None and counts == {} and isinstance(want, Malformed) and want.reason == "invalid_span_id"


def test_span_header_is_the_header_decode_traces_builds():
    value = _request(_span(0), Span(trace_id=TRACE_ID, span_id=b"\x02" * 8, kind=9, parent_span_id=b"\x01" * 8))
    trace = otlp.decode_traces(value)[TRACE_ID]
    assert [span_header("svc", h["detail"]) for h in trace.spans] == trace.spans


# ------------------------------------------------------------------ through the job
NOW = time.time_ns()


def _messages() -> list[Received]:
    keyed, _ = peer_traffic.generate(60, start_ns=NOW - 5 * S, big_traces=1)
    msgs = [Received(0, i, key, value, ref=i) for i, (key, value) in enumerate(keyed.messages)]
    rng = random.Random(7)
    for i in range(5):  # the chaos suite's planted trace: canaries in every place a producer has text
        tid = rng.randbytes(16)
        msgs.append(Received(0, len(msgs), tid, fuzz.encode(canaries.planted_batch(rng, tid), "otlp_proto"), ref=i))
    tid = rng.randbytes(16)  # a kept trace with a link no output can carry: dead-lettered
    bad = Span(trace_id=tid, span_id=b"\x01" * 8, name="x", start_time_unix_nano=NOW - S, end_time_unix_nano=NOW - S)
    bad.links.add(trace_id=b"\x01" * 3, span_id=b"\x01" * 8)
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.append(bad)
    msgs.append(Received(0, len(msgs), tid, req.SerializeToString(), ref=0))
    return msgs


@pytest.mark.parametrize("privacy", [True, False])
@pytest.mark.parametrize("max_record_bytes", [None, 64 * 1024])
def test_the_job_writes_the_same_records_with_the_native_writer(privacy, max_record_bytes, monkeypatch):
    """Every record (kept traces whole and split, PII audits, dead letters, decisions) the same
    bytes as with ``KeptWriter`` alone; the native path parses no kept message with protobuf
    (before: ``codec.decode_trace`` for every kept trace)."""
    cfg = make_config(
        job={"core": "native"},  # named: under TAILSIFT_AUTO_CORE=python, auto would not build the writer
        ingest={"format": "otlp_proto"},
        emit={"format": "otlp_proto"},
        privacy={"enabled": privacy},
        sampling={"policies": [{"name": "all", "type": "always_sample"}]},
    )
    outs = []
    for native in (True, False):
        job = Job(cfg, worker_id="t", protector=build_protector(cfg.privacy, ENV) if privacy else None)
        assert job.native_kept is not None
        if not native:
            job.native_kept = None
        if max_record_bytes is not None:
            job.max_record_bytes = max_record_bytes
        parsed = []
        python_decode = job.codec.python.decode_trace

        def decode_trace(value, trace_id, _parsed=parsed, _decode=python_decode):
            _parsed.append(trace_id)
            return _decode(value, trace_id)

        monkeypatch.setattr(job.codec.python, "decode_trace", decode_trace)
        job.ingest(_messages(), now_ns=NOW)
        out = job.collect(NOW + 10 * S, flush_all_windows=True)
        outs.append(([(r.topic, r.key, r.value) for r in out.records], parsed))
    (got, got_parsed), (want, want_parsed) = outs
    assert got == want
    kept = [r for r in got if r[0] == cfg.topics.traces_kept.name]
    assert len(kept) > 60 and any(r[0] == cfg.topics.deadletter.name for r in got)
    assert len(want_parsed) > 60 and len(got_parsed) == 1  # only the message with the bad link
