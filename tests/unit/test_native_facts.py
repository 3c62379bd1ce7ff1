"""The decision's facts from the native core (``native/src/facts.rs``, ``NativeCodec.trace_facts``)
against the Python reference: the job's Python codec's header dicts (``job.core: python``) read by
``operators.trace.TraceView`` and paired by ``operators.service_graph.ServiceGraph.add_trace``.

For the same due traces — generated traffic and random ones with hostile shapes (statuses outside
the enum, duplicate span IDs, parents that are missing, themselves or in another message, times at
0, 2^64 − 1, end before start, several tracestates, several resources and traces in one request)
— the native ``TraceFacts`` must give a view with the same facts, the same policy decisions and
the same span dicts when asked for them, and its per-pair requests (``ServiceGraph.add_pairs``)
the same service-graph edges, caps and labels included.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from operators.decide import DecisionEngine
from operators.service_graph import ServiceGraph
from operators.span_times import SpanTimeBounds
from operators.trace import TraceView
from pipeline import codecs
from pipeline.codecs import avro, native, otlp
from pipeline.codecs.protowire import varint
from pipeline.generator.callgraph import TraceGenerator
from pipeline.policies import build_engine
from tests.support.jobs import make_config

if not native.AVAILABLE:
    pytest.skip("the native core is not built (no Rust toolchain)", allow_module_level=True)

from pipeline.bench import as_otlp  # noqa: E402 - after the skip: imports the job's dependencies

NOW = 1_700_000_000_000_000_000
BOUNDS = SpanTimeBounds(window_ns=60_000_000_000, max_skew_ns=300_000_000_000)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FACTS = ("span_count", "has_error", "start_ns", "end_ns", "duration_ns", "trace_state", "randomness")
POLICIES = [
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
    {"name": "slow", "type": "latency", "threshold_ms": 500},
    {"name": "ok", "type": "status_code", "status_codes": ["OK"]},  # reads the spans themselves
    {"name": "route", "type": "string_attribute", "key": "http.route", "values": ["/x"]},
    {"name": "baseline", "type": "probabilistic", "sampling_percentage": 20},
]


def engine() -> DecisionEngine:
    return build_engine(make_config(sampling={"policies": POLICIES}).sampling)


def reference(fmt: str, values: list[bytes], trace_id: bytes) -> list[dict]:
    """The trace's span dicts as ``job.core: python`` reads them at its decision (the Python
    codec's ``decode_trace``, message after message)."""
    codec = codecs.for_format(fmt, BOUNDS)
    return [h for v in values for h in codec.decode_trace(v, trace_id).spans()]


def plain(fmt: str, header: dict) -> dict:
    """A header dict with its OTLP ``detail`` parsed (bytes natively, the parsed Span in Python)."""
    h = dict(header)
    if fmt == "otlp_proto" and isinstance(h.get("detail"), bytes):
        h["detail"] = otlp.Span.FromString(h["detail"])
    return h


def assert_same(fmt: str, traces: list[tuple[bytes, list[bytes]]], max_edges: int = 1_000, label=None) -> None:
    """``traces``: (trace ID, its messages) as one decision chunk."""
    codec = native.NativeCodec(fmt, BOUNDS, python=codecs.for_format(fmt, BOUNDS))
    values = [v for _, msgs in traces for v in msgs]
    facts, pairs = codec.trace_facts(values, [t for t, _ in traces], [len(m) for _, m in traces])
    assert len(facts) == len(traces)
    native_graph, python_graph = ServiceGraph(max_edges, label), ServiceGraph(max_edges, label)
    native_graph.add_pairs(pairs)
    mine_engine, ref_engine = engine(), engine()
    for (trace_id, msgs), f in zip(traces, facts):
        spans = reference(fmt, msgs, trace_id)
        python_graph.add_trace(spans)
        want = TraceView(trace_id, spans, now_ns=NOW, size_bytes=100, decode_detail=codec.python.decode_detail)
        got = TraceView.from_facts(trace_id, f, now_ns=NOW, size_bytes=100, decode_detail=codec.decode_detail)
        assert {k: getattr(got, k) for k in FACTS} == {k: getattr(want, k) for k in FACTS}
        assert "spans" not in got.__dict__  # no header dict built for the facts
        assert mine_engine.decide(got) == ref_engine.decide(want)
        # asked for, the spans are the dicts the native re-decode built before, field for field
        assert [plain(fmt, h) for h in f.spans()] == [plain(fmt, h) for h in spans]
        assert [plain(fmt, h) for h in f.spans()] == [
            plain(fmt, h) for h in (h for hs in codec.trace_headers(msgs, [trace_id] * len(msgs)) for h in hs)
        ]
        assert plain(fmt, got.root or {}) == plain(fmt, want.root or {})
    assert mine_engine.policy_errors == ref_engine.policy_errors
    got_edges = [(e.client, e.server, e.requests, e.failed, e.latency_sum_ns) for e in native_graph.drain()]
    want_edges = [(e.client, e.server, e.requests, e.failed, e.latency_sum_ns) for e in python_graph.drain()]
    assert got_edges == want_edges


# ------------------------------------------------------------------ traffic
GEN = TraceGenerator()


def generated(fmt: str, n: int) -> list[tuple[bytes, list[bytes]]]:
    out = []
    for i in range(n):
        tr = GEN.trace(NOW - 20_000_000_000 + i * 1_000_000)
        msgs = list(tr.encoded) if fmt == "avro" else [as_otlp(v) for v in tr.encoded]
        out.append((tr.trace_id, msgs))
    return out


def test_generated_traces_have_the_same_facts_decisions_and_edges():
    for fmt in ("avro", "otlp_proto"):
        traces = generated(fmt, 40)
        assert sum(len(m) > 1 for _, m in traces) > 10  # traces of several messages
        assert_same(fmt, traces)
        assert_same(fmt, traces, max_edges=3, label=lambda s: s[:1])  # overflow and merged labels


TRACE_IDS = [bytes([i]) * 16 for i in range(1, 4)]
SPAN_IDS = [bytes([i]) * 8 for i in range(1, 7)]
U64 = st.one_of(st.sampled_from([0, 1, NOW, NOW + 1, (1 << 64) - 1, 1 << 63]), st.integers(0, (1 << 64) - 1))
I64 = st.one_of(st.sampled_from([0, 1, NOW, -1, (1 << 63) - 1, -(1 << 63)]), st.integers(-(1 << 63), (1 << 63) - 1))
SERVICES = st.sampled_from(["a", "b", "c", "", "ü"])


@st.composite
def otlp_span(draw, trace_id: bytes) -> dict:
    return {
        "trace_id": draw(st.sampled_from([trace_id] * 3 + TRACE_IDS)),  # other traces in the request
        "span_id": draw(st.sampled_from(SPAN_IDS)),  # duplicates: the last one is the parent
        "parent_span_id": draw(st.sampled_from([b""] + SPAN_IDS + [b"\xff" * 8])),
        "start": draw(U64),
        "end": draw(U64),
        "status": draw(st.integers(0, 4)),  # 3, 4: outside the enum, read as UNSET
        "trace_state": draw(st.sampled_from(["", "", "ot=rv:00000000000001", "k=v", "ot=th:8"])),
        "route": draw(st.booleans()),
    }


@st.composite
def otlp_trace(draw) -> tuple[bytes, list[bytes]]:
    trace_id = draw(st.sampled_from(TRACE_IDS))
    msgs = []
    for _ in range(draw(st.integers(1, 3))):
        req = ExportTraceServiceRequest()
        for _ in range(draw(st.integers(1, 3))):
            rs = req.resource_spans.add()
            service = draw(SERVICES)
            if service or draw(st.booleans()):
                rs.resource.attributes.add(key="service.name").value.string_value = service
            ss = rs.scope_spans.add()
            for s in draw(st.lists(otlp_span(trace_id), max_size=5)):
                sp = ss.spans.add()
                sp.trace_id, sp.span_id, sp.parent_span_id = s["trace_id"], s["span_id"], s["parent_span_id"]
                sp.name = "op"
                sp.start_time_unix_nano, sp.end_time_unix_nano = s["start"], s["end"]
                sp.status.code = s["status"]
                sp.trace_state = s["trace_state"]
                if s["route"]:
                    sp.attributes.add(key="http.route").value.string_value = "/x"
        # every message of a buffered trace holds some of it (ingest buffered it under this ID)
        ss = req.resource_spans.add().scope_spans.add()
        sp = ss.spans.add(trace_id=trace_id, span_id=draw(st.sampled_from(SPAN_IDS)), name="op")
        sp.start_time_unix_nano, sp.end_time_unix_nano = draw(U64), draw(U64)
        msgs.append(req.SerializeToString())
    return trace_id, msgs


@st.composite
def avro_trace(draw) -> tuple[bytes, list[bytes]]:
    trace_id = draw(st.sampled_from(TRACE_IDS))
    msgs = []
    for _ in range(draw(st.integers(1, 3))):
        spans = []
        for _ in range(draw(st.integers(1, 5))):
            route = draw(st.booleans())
            spans.append(
                {
                    "span_id": draw(st.sampled_from(SPAN_IDS)),
                    "parent_span_id": draw(st.sampled_from([None] + SPAN_IDS + [b"\xff" * 8])),
                    "name": "op",
                    "kind": "SERVER",
                    "start_time_unix_nano": draw(I64),
                    "end_time_unix_nano": draw(I64),
                    "status_code": draw(st.sampled_from(otlp.STATUS)),
                    "trace_state": draw(st.sampled_from(["", "", "ot=rv:00000000000001", "k=v"])),
                    "detail": avro.encode_detail(
                        {**avro.EMPTY_DETAIL, "attributes": {"http.route": "/x"} if route else {}}
                    ),
                }
            )
        msgs.append(avro.encode_span_batch({"trace_id": trace_id, "service": draw(SERVICES), "spans": spans}))
    return trace_id, msgs


@SETTINGS
@given(st.lists(otlp_trace(), min_size=1, max_size=4), st.integers(1, 6), st.booleans())
def test_random_otlp_traces_have_the_same_facts_decisions_and_edges(traces, max_edges, merge):
    assert_same("otlp_proto", traces, max_edges, (lambda s: s.upper()[:1]) if merge else None)


@SETTINGS
@given(st.lists(avro_trace(), min_size=1, max_size=4), st.integers(1, 6), st.booleans())
def test_random_avro_traces_have_the_same_facts_decisions_and_edges(traces, max_edges, merge):
    assert_same("avro", traces, max_edges, (lambda s: s.upper()[:1]) if merge else None)


def _ld(n: int, body: bytes) -> bytes:
    return varint(n << 3 | 2) + varint(len(body)) + body


def _fixed64(n: int, v: int) -> bytes:
    return varint(n << 3 | 1) + v.to_bytes(8, "little")


# what protobuf accepts besides the plain shapes: the re-read's fast path gives up at the unknown
# ones (the validating reader decides), reads the others as protobuf merges them
SPAN_ODDITIES = [
    _ld(3, b"k=v"),  # tracestate, maybe twice: the last wins
    _ld(3, b"ot=rv:00000000000001"),
    _ld(5, b"op"),
    _ld(15, varint(3 << 3) + varint(2)),  # a second status: merged, the last code wins
    _ld(15, varint(3 << 3) + varint(1)),
    _ld(15, _ld(2, b"msg")),
    _fixed64(7, 5),  # a second start time
    varint(20 << 3) + varint(5),  # an unknown field
    varint(21 << 3 | 3) + varint(21 << 3 | 4),  # an unknown group
    _ld(6, b"x"),  # kind with another wire type: an unknown field to upb
    _ld(15, varint(9 << 3) + varint(1)),  # an unknown field in the status
    _ld(9, _ld(1, b"http.route") + _ld(2, _ld(1, b"/x"))),
    varint(6 << 3) + varint(2),
    varint(16 << 3 | 5) + bytes(4),
]


@st.composite
def odd_otlp_trace(draw) -> tuple[bytes, list[bytes]]:
    """Requests written field by field in any order, with repeated, unknown and mistyped fields."""
    trace_id = draw(st.sampled_from(TRACE_IDS))
    msgs = []
    for _ in range(draw(st.integers(1, 2))):
        spans = []
        for i in range(draw(st.integers(1, 4))):
            fields = [
                _ld(1, trace_id if i == 0 else draw(st.sampled_from([trace_id, trace_id, TRACE_IDS[0]]))),
                _ld(2, draw(st.sampled_from(SPAN_IDS))),
                _fixed64(7, draw(U64)),
                _fixed64(8, draw(U64)),
                _ld(15, varint(3 << 3) + varint(draw(st.integers(0, 4)))),
            ]
            parent = draw(st.sampled_from([None] + SPAN_IDS))
            if parent is not None:
                fields.append(_ld(4, parent))
            fields += draw(st.lists(st.sampled_from(SPAN_ODDITIES), max_size=3))
            spans.append(b"".join(draw(st.permutations(fields))))
        kv = _ld(1, b"service.name") + _ld(2, _ld(1, draw(SERVICES).encode()))
        if draw(st.booleans()):  # the oneof's last member decides: an int after the string
            kv = _ld(1, b"service.name") + _ld(2, _ld(1, b"a") + varint(3 << 3) + varint(7))
        resource = _ld(1, _ld(1, kv))
        scope_spans = _ld(2, _ld(1, _ld(1, b"lib")) + b"".join(_ld(2, sp) for sp in spans))
        parts = [resource, scope_spans] + draw(st.lists(st.sampled_from([resource, _ld(3, b"url")]), max_size=2))
        msgs.append(_ld(1, b"".join(draw(st.permutations(parts)))))
    return trace_id, msgs


@SETTINGS
@given(st.lists(odd_otlp_trace(), min_size=1, max_size=3), st.integers(1, 6))
def test_otlp_written_out_of_order_with_odd_fields_has_the_same_facts_decisions_and_edges(traces, max_edges):
    """The re-read's fast path (plain shapes, skipping by length) and its way back to the
    validating reader against upb's parse of the same bytes."""
    traces = [(t, msgs) for t, msgs in traces if all(_accepted(v) for v in msgs)]
    if traces:
        assert_same("otlp_proto", traces, max_edges)


def _accepted(value: bytes) -> bool:
    """Ingest would have buffered it (the re-read only ever sees such messages)."""
    (result,) = native.NativeCodec("otlp_proto", BOUNDS).decode_batch([value], NOW)
    return isinstance(result, list) or result.reason == "invalid_timestamp"


def test_a_message_rust_cannot_read_again_has_no_facts():
    """Never expected (ingest read the same bytes), but not a crash: None, and the caller reads
    that trace with the Python codec; the other traces of the call keep their facts and pairs."""
    codec = native.NativeCodec("avro", BOUNDS, python=codecs.for_format("avro", BOUNDS))
    (good,) = generated("avro", 1)
    facts, pairs = codec.trace_facts([b"\x00junk"] + good[1], [b"\x01" * 16, good[0]], [1, len(good[1])])
    assert facts[0] is None and facts[1].span_count == len(reference("avro", good[1], good[0]))
    assert pairs
    with pytest.raises(ValueError):
        codec.trace_facts([b"x"], [b"\x01" * 16], [2])
