"""The native core (Rust, ``pipeline/codecs/native.py``) against the Python decoders it replaces.

The Python decode of the job is the reference: ``python_decode`` below is the decode half of
``Job.ingest`` (Avro) and ``Job._ingest_otlp`` as they are today (after the codec-boundary merge it
should call the boundary's Python codecs instead). For the same messages — generated traffic,
messages built with hostile ids and times, their truncations, bit flips and junk, random bytes
and random protobuf wire structures — both must give the same fragments (trace IDs, groups,
services, every header field) or the same dead-letter verdict: same reason and, except for
Avro ``decode_error`` (whose text is fastavro's exception message), the same detail text.
"""

from __future__ import annotations

import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from operators.span_times import SpanTimeBounds
from pipeline import codecs
from pipeline.codecs import avro, decode_each, native, otlp
from pipeline.codecs.interface import Fragment, Malformed
from pipeline.generator.callgraph import TraceGenerator

if not native.AVAILABLE:
    if shutil.which("cargo"):
        pytest.fail("cargo is installed but pipeline._native did not build (pip install -e . output)", pytrace=False)
    pytest.skip("the native core is not built (no Rust toolchain)", allow_module_level=True)

from pipeline.bench import as_otlp  # noqa: E402 - after the skip: imports the job's dependencies

MAX_LONG = (1 << 63) - 1
NOW = 1_700_000_000_000_000_000
BOUNDS = SpanTimeBounds(window_ns=60_000_000_000, max_skew_ns=300_000_000_000)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ the Python reference
def python_decode(fmt: str, value: bytes | None, now_ns: int) -> list[Fragment] | Malformed:
    """The job's own Python codec (``pipeline.codecs.for_format``, what ``job.core: python`` runs):
    fragments, or the dead-letter verdict."""
    (result,) = decode_each(codecs.for_format(fmt, BOUNDS), [value], now_ns)
    return result


def comparable(fmt: str, result, native_side: bool):
    """Fragments as plain data (OTLP ``detail``: the protobuf Span either way), verdicts as tuples."""
    if isinstance(result, Malformed):
        same_text = not (fmt == "avro" and result.reason == "decode_error")
        return ("reject", result.reason, result.detail if same_text else None)
    out = []
    for f in result:
        groups = []
        for service, headers in f.groups:
            hs = []
            for h in headers:
                h = dict(h)
                if fmt == "otlp_proto" and native_side:
                    h["detail"] = otlp.Span.FromString(h["detail"])
                hs.append(h)
            groups.append((service, hs))
        out.append((f.trace_id, groups, f.span_count))
    return out


def assert_same(fmt: str, values: list[bytes | None], now_ns: int = NOW) -> None:
    codec = native.NativeCodec(fmt, BOUNDS)
    got = codec.decode_batch(values, now_ns)  # one call for the batch, as the job makes it
    assert len(got) == len(values)
    for value, mine in zip(values, got):
        ref = python_decode(fmt, value, now_ns)
        assert comparable(fmt, mine, True) == comparable(fmt, ref, False), (value or b"")[:300]


# ------------------------------------------------------------------ messages
GEN = TraceGenerator()
GENERATED_AVRO = [v for i in range(6) for v in GEN.trace(NOW - 20_000_000_000 + i * 1_000_000).encoded][:24]
GENERATED_OTLP = [as_otlp(v) for v in GENERATED_AVRO[:8]]

TIMES = st.one_of(
    st.sampled_from(
        [0, 1, -1, NOW, NOW - 1, NOW + 299_999_999_999, NOW + 300_000_000_001, NOW + 10**15]
        + [MAX_LONG, MAX_LONG - 60_000_000_000, MAX_LONG - 60_000_000_001, -(1 << 63)]
    ),
    st.integers(min_value=-(1 << 63), max_value=MAX_LONG),
    st.integers(min_value=NOW - 10**12, max_value=NOW + 10**12),
)
U64_TIMES = st.one_of(TIMES.filter(lambda t: t >= 0), st.sampled_from([(1 << 64) - 1, 1 << 63]))
TRACE_IDS = st.one_of(
    st.sampled_from([b"\x01" * 16, b"\x02" * 16, bytes(16), b"\x03" * 16]),
    st.binary(min_size=0, max_size=18),
)
SPAN_IDS = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))


@st.composite
def avro_batches(draw) -> bytes:
    spans = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        spans.append(
            {
                "span_id": draw(st.binary(min_size=8, max_size=8)),
                "parent_span_id": draw(st.one_of(st.none(), st.binary(min_size=8, max_size=8))),
                "name": draw(st.sampled_from(["GET /", "", "db", "ü"])),
                "kind": draw(st.sampled_from(otlp.KINDS)),
                "start_time_unix_nano": draw(TIMES),
                "end_time_unix_nano": draw(TIMES),
                "status_code": draw(st.sampled_from(otlp.STATUS)),
                "trace_state": draw(st.sampled_from(["", "a=b"])),
                "detail": draw(st.sampled_from([b"", b"\x00\x00\x00\x00"])),
            }
        )
    if spans and draw(st.booleans()):
        spans.append(dict(spans[0]))  # an equal span: violation() names the first by spans.index
    trace_id = draw(st.one_of(st.binary(min_size=16, max_size=16), st.just(bytes(16))))
    return avro.encode_span_batch(
        {"trace_id": trace_id, "service": draw(st.sampled_from(["cart", ""])), "spans": spans}
    )


@st.composite
def otlp_requests(draw) -> bytes:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        rs = req.resource_spans.add()
        for key, val in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["service.name", "host", ""]),
                    st.one_of(st.text(max_size=4), st.integers(-(1 << 63), MAX_LONG)),
                ),
                max_size=3,
            )
        ):
            kv = rs.resource.attributes.add(key=key)
            if isinstance(val, str):
                kv.value.string_value = val
            else:
                kv.value.int_value = val
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            ss = rs.scope_spans.add()
            ss.scope.name = "lib"
            for _ in range(draw(st.integers(min_value=0, max_value=3))):
                sp = ss.spans.add()
                sp.trace_id = draw(TRACE_IDS)
                sp.span_id = draw(SPAN_IDS)
                sp.parent_span_id = draw(st.one_of(st.just(b""), SPAN_IDS))
                sp.name = draw(st.sampled_from(["GET /", "", "ü"]))
                sp.kind = draw(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1) | st.integers(0, 7))
                sp.start_time_unix_nano = draw(U64_TIMES)
                sp.end_time_unix_nano = draw(U64_TIMES)
                sp.status.code = draw(st.integers(0, 4))
                sp.trace_state = draw(st.sampled_from(["", "k=v"]))
                if draw(st.booleans()):
                    sp.attributes.add(key="http.route").value.string_value = "/x"
                    sp.events.add(time_unix_nano=5, name="e")
                    sp.links.add(trace_id=b"\x09" * 16, span_id=b"\x01" * 8)
    return req.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# random protobuf wire structure: fields 0-16 of every wire type, nested length-delimited bodies
WIRE = st.recursive(
    st.tuples(st.integers(0, 16), st.sampled_from([0, 1, 5]), st.integers(0, (1 << 64) - 1)).map(
        lambda t: (
            _varint(t[0] << 3 | t[1])
            + (_varint(t[2]) if t[1] == 0 else t[2].to_bytes(8, "little")[: 8 if t[1] == 1 else 4])
        )
    )
    | st.tuples(st.integers(0, 16), st.binary(max_size=12)).map(
        lambda t: _varint(t[0] << 3 | 2) + _varint(len(t[1])) + t[1]
    )
    | st.sampled_from([b"\x0b\x0c", b"\x2b\x2c", b"\x0c", b"\x0e", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]),
    lambda inner: st.tuples(st.integers(0, 16), st.lists(inner, max_size=4)).map(
        lambda t: _varint(t[0] << 3 | 2) + _varint(len(b"".join(t[1]))) + b"".join(t[1])
    ),
    max_leaves=12,
).map(lambda b: b)


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    def cut(t):
        v, i = t
        return v[: i % (len(v) + 1)]

    def flip(t):
        v, i, x = t
        if not v:
            return v
        i %= len(v)
        return v[:i] + bytes([v[i] ^ x]) + v[i + 1 :]

    def insert(t):
        v, i, junk = t
        i %= len(v) + 1
        return v[:i] + junk + v[i:]

    n = st.integers(min_value=0, max_value=1 << 16)
    return st.one_of(
        valid,
        st.tuples(valid, n).map(cut),
        st.tuples(valid, n, st.integers(1, 255)).map(flip),
        st.tuples(valid, n, st.binary(min_size=1, max_size=6)).map(insert),
    )


AVRO_MESSAGES = st.one_of(
    mutated(st.one_of(st.integers(0, len(GENERATED_AVRO) - 1).map(GENERATED_AVRO.__getitem__), avro_batches())),
    st.binary(max_size=200),
    st.none(),
)
OTLP_MESSAGES = st.one_of(
    mutated(st.one_of(st.integers(0, len(GENERATED_OTLP) - 1).map(GENERATED_OTLP.__getitem__), otlp_requests(), WIRE)),
    st.binary(max_size=200),
    st.none(),
)


# ------------------------------------------------------------------ tests
def test_generated_traffic_decodes_identically_and_is_accepted():
    assert_same("avro", GENERATED_AVRO)
    assert_same("otlp_proto", GENERATED_OTLP)
    got = native.NativeCodec("otlp_proto", BOUNDS).decode_batch(GENERATED_OTLP, NOW)
    assert all(isinstance(r, list) and r for r in got)  # the valid traffic is not all rejected
    spans = sum(f.span_count for r in got for f in r)
    assert spans == sum(len(otlp.parse_request(v).resource_spans[0].scope_spans[0].spans) for v in GENERATED_OTLP)


@SETTINGS
@given(st.lists(AVRO_MESSAGES, min_size=1, max_size=4), st.sampled_from([NOW, 0, 1, MAX_LONG]))
def test_avro_batches_decode_identically(values, now_ns):
    assert_same("avro", values, now_ns)


@SETTINGS
@given(st.lists(OTLP_MESSAGES, min_size=1, max_size=4), st.sampled_from([NOW, 0, 1, MAX_LONG]))
def test_otlp_requests_decode_identically(values, now_ns):
    assert_same("otlp_proto", values, now_ns)


@pytest.mark.parametrize(
    "fmt,value",
    [
        # fastavro reads a negative enum/union index as Python list indexing (-1 = last symbol):
        # accepted by the reference, so accepted natively
        (
            "avro",
            bytes(range(1, 17))
            + b"\x02a\x02"
            + b"\x01" * 8
            + b"\x01"
            + b"\x02" * 8
            + b"\x00\x01\x02\x04\x01\x00\x00\x00\x00\x00",
        ),
        # an 11-byte long: fastavro shifts modulo 64
        (
            "avro",
            bytes(range(1, 17))
            + b"\x02a\x02"
            + b"\x01" * 8
            + b"\x00\x00\x02"
            + b"\x80" * 10
            + b"\x01\x04\x01\x00\x00\x00\x00\x00",
        ),
        # span 0 with times 0, span 1 with a zero ID: the Python codec checks each span's ID and
        # times in one pass (invalid_timestamp); the Rust reader checked every ID first and said
        # invalid_span_id (found by the hypothesis test above)
        (
            "avro",
            bytes(15) + b"\x01\x08" + bytes(4) + b"\x04" + bytes(7) + b"\x01\x00\n" + bytes(29) + b"\n" + bytes(5),
        ),
        # nesting: 48 AnyValue array levels parse, 49 exceed upb's depth limit
        ("otlp_proto", "nest48"),
        ("otlp_proto", "nest49"),
        # unknown groups: 100 deep parse, 101 do not
        ("otlp_proto", b"\x2b" * 100 + b"\x2c" * 100),
        ("otlp_proto", b"\x2b" * 101 + b"\x2c" * 101),
        # field number 0, a bad UTF-8 attribute value, a known field with the wrong wire type
        ("otlp_proto", b"\x00\x00"),
        ("otlp_proto", "bad_utf8_attribute"),
        ("otlp_proto", "name_as_varint"),
    ],
)
def test_edges_of_the_wire_formats(fmt, value):
    def ld(n: int, body: bytes) -> bytes:
        return _varint(n << 3 | 2) + _varint(len(body)) + body

    span = ld(1, b"\x05" * 16) + ld(2, b"\x06" * 8) + b"\x39" + (NOW - 5).to_bytes(8, "little")
    span += b"\x41" + (NOW - 1).to_bytes(8, "little")
    if isinstance(value, str) and value.startswith("nest"):
        any_ = ld(1, b"x")
        for _ in range(int(value[4:])):
            any_ = ld(5, ld(1, any_))
        value = ld(1, ld(1, ld(1, ld(1, b"k") + ld(2, any_))) + ld(2, ld(2, span)))
    elif value == "bad_utf8_attribute":
        value = ld(1, ld(2, ld(2, span + ld(9, ld(1, b"k") + ld(2, ld(1, b"\xff\xfe"))))))
    elif value == "name_as_varint":
        value = ld(1, ld(2, ld(2, span + b"\x28\x01")))
    assert_same(fmt, [value])


def test_a_panic_in_the_core_dead_letters_its_message_and_spares_the_batch():
    """The guard every decode runs under: a panic becomes that message's decode_error verdict."""
    got = native._core._guard_selftest([b"ok", b"panic: injected", b"abc"])
    assert got[0] == 2 and got[2] == 3
    assert got[1][0] == "decode_error"


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=20), st.binary(max_size=5).map(lambda b: b"panic" + b)), max_size=8))
def test_panics_among_random_messages_never_escape(values):
    got = native._core._guard_selftest(values)
    for value, result in zip(values, got):
        if value.startswith(b"panic"):
            assert result == (result[0], result[1]) and result[0] == "decode_error"
        else:
            assert result == len(value)


def test_detail_bytes_decode_to_the_same_attributes_as_the_python_headers():
    for fmt, values in (("avro", GENERATED_AVRO[:4]), ("otlp_proto", GENERATED_OTLP[:4])):
        codec = native.NativeCodec(fmt, BOUNDS)
        for value, result in zip(values, codec.decode_batch(values, NOW)):
            ref = python_decode(fmt, value, NOW)
            decode_ref = avro.decode_detail if fmt == "avro" else otlp.decode_detail
            mine = [codec.decode_detail(h["detail"]) for f in result for _, hs in f.groups for h in hs]
            theirs = [decode_ref(h["detail"]) for f in ref for _, hs in f.groups for h in hs]
            assert mine == theirs and any(d["attributes"] for d in mine)


def test_single_message_interface_raises_the_verdict_and_returns_fragments():
    codec = native.NativeCodec("avro", BOUNDS)
    with pytest.raises(Malformed) as bad:
        codec.decode(GENERATED_AVRO[0][:-3], NOW)
    assert bad.value.reason == "decode_error" and bad.value.detail.startswith("not a span_batch.v1 record: ")
    (fragment,) = codec.decode(GENERATED_AVRO[0], NOW)
    assert fragment.trace_id == avro.decode_batch(GENERATED_AVRO[0])["trace_id"] and fragment.handle is None
    with pytest.raises(ValueError, match="otlp_json"):
        native.NativeCodec("otlp_json", BOUNDS)


@pytest.mark.parametrize("fmt", ["avro", "otlp_proto"])
def test_the_chaos_suites_hostile_messages_decode_identically(fmt):
    """The hostile inputs of `tailsift chaos` (pipeline/chaos/fuzz.py): random bytes, truncations,
    bit flips, bad ids and times, 2^64 times, deep attribute arrays, bad UTF-8, tombstones."""
    from pipeline.chaos import fuzz

    hostile = list(fuzz.messages(600, fmt, seed=17))
    kinds = {h.kind for h in hostile}
    assert {"random_bytes", "truncated", "bit_flipped", "tombstone"} <= kinds and len(kinds) > 10
    values = [h.value for h in hostile]
    now_ns = time.time_ns()  # the chaos messages are timed from the clock; both sides see this now
    for i in range(0, len(values), 100):
        assert_same(fmt, values[i : i + 100], now_ns)
    verdicts = native.NativeCodec(fmt, BOUNDS).decode_batch(values, now_ns)
    assert sum(isinstance(v, Malformed) for v in verdicts) > len(values) // 2


@pytest.mark.parametrize("fmt", ["avro", "otlp_proto"])
def test_the_jobs_native_codec_gives_the_python_codecs_verdicts_under_the_span_limits(fmt):
    """What the job runs (``codecs.for_format(…, core="native")``, the default ``ingest.*`` limits)
    against ``job.core: python`` on the chaos suite's hostile messages: a 1 MiB attribute is
    ``span_too_large``, 10,000 attributes ``too_many_attributes``, an all-zero span ID
    ``invalid_span_id`` on both. The native reader has no limit checks of its own: a message long
    enough to break one is decoded by the Python codec (before, every such message was taken)."""
    from pipeline.chaos import fuzz
    from pipeline.codecs.interface import SpanLimits
    from pipeline.config import IngestConfig

    ingest = IngestConfig()
    limits = SpanLimits(ingest.max_span_bytes, ingest.max_attributes_per_span)
    python = codecs.for_format(fmt, BOUNDS, limits)
    mine = codecs.for_format(fmt, BOUNDS, limits, core="native")
    assert isinstance(mine, native.NativeCodec)
    hostile = list(fuzz.messages(600, fmt, seed=17))
    values = [h.value for h in hostile]
    now_ns = time.time_ns()
    got = decode_each(mine, values, now_ns)
    want = decode_each(python, values, now_ns)
    reasons = set()
    for value, g, w in zip(values, got, want):
        assert comparable(fmt, g, True) == comparable(fmt, w, False), (value or b"")[:300]
        if isinstance(w, Malformed):
            reasons.add(w.reason)
    assert {"span_too_large", "too_many_attributes", "invalid_span_id"} <= reasons, reasons


# ------------------------------------------------------------------ per-span limits (in Rust)
def assert_same_under(fmt: str, values: list[bytes | None], limits, now_ns: int = NOW) -> list:
    """The job's codecs under ``limits`` (``ingest.max_span_bytes``, ``max_attributes_per_span``):
    ``job.core: native`` against ``job.core: python``, message by message. Returns the verdicts."""
    mine = codecs.for_format(fmt, BOUNDS, limits, core="native")
    python = codecs.for_format(fmt, BOUNDS, limits)
    got = decode_each(mine, values, now_ns)
    want = decode_each(python, values, now_ns)
    for value, g, w in zip(values, got, want):
        assert comparable(fmt, g, True) == comparable(fmt, w, False), (value or b"")[:300]
    return want


def _ld(n: int, body: bytes) -> bytes:
    return _varint(n << 3 | 2) + _varint(len(body)) + body


def _any_value(depth: int = 0) -> st.SearchStrategy[bytes]:
    """An AnyValue's bytes: one or more oneof members in a row (the last one wins, a message member
    repeated merges), nested arrays and kvlists, now and then an unknown field."""
    scalar = st.one_of(
        st.text(max_size=6).map(lambda s: _ld(1, s.encode())),
        st.integers(0, 3).map(lambda b: b"\x10" + _varint(b)),
        st.integers(-(1 << 63), MAX_LONG).map(lambda i: b"\x18" + _varint(i % (1 << 64))),
        st.floats(allow_nan=False).map(lambda f: b"\x21" + __import__("struct").pack("<d", f)),
        st.binary(max_size=6).map(lambda b: _ld(7, b)),
        st.just(b"\x48\x01"),  # field 9: unknown
    )
    if depth >= 2:
        return st.lists(scalar, max_size=3).map(b"".join)
    inner = _any_value(depth + 1)
    member = st.one_of(
        scalar,
        st.lists(inner, max_size=3).map(lambda vs: _ld(5, b"".join(_ld(1, v) for v in vs))),
        st.lists(st.tuples(st.text(max_size=3), inner), max_size=2).map(
            lambda kvs: _ld(6, b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in kvs))
        ),
    )
    return st.lists(member, max_size=3).map(b"".join)


KEY_VALUES = st.tuples(st.text(max_size=8), _any_value(), st.booleans()).map(
    # a KeyValue; now and then its value twice (protobuf merges the two AnyValues)
    lambda t: _ld(1, t[0].encode()) + _ld(2, t[1]) + (_ld(2, t[1]) if t[2] else b"")
)
# fields of a Span after its IDs, canonical or not: defaults written out, a negative kind in 5 or 10
# bytes, over-long varints, a uint32 count past 32 bits, two statuses, unknown fields and groups, a
# known field with another wire type (kept as unknown), events and links with attributes
SPAN_FIELDS = st.one_of(
    KEY_VALUES.map(lambda kv: _ld(9, kv)),
    st.sampled_from(
        [
            b"\x30\x00",
            b"\x30\xff\xff\xff\xff\x0f",
            b"\x30" + _varint((1 << 64) - 1),
            b"\x30\x82\x80\x00",
            b"\x30\x02",
            b"\x39" + bytes(8),
            b"\x41" + (NOW - 1).to_bytes(8, "little"),
            _ld(5, b""),
            _ld(5, "ü name".encode()),
            _ld(3, b"k=v"),
            _ld(4, b""),
            b"\x50" + _varint((1 << 32) + 1),
            b"\x50\x00",
            b"\x60\x07",
            b"\x85\x01\x01\x00\x00\x00",
            b"\x85\x01\x00\x00\x00\x00",
            b"\x28\x01",
            b"\x8b\x01\x08\x01\x8c\x01",
            b"\xf8\x01\x05",
            _ld(15, b"\x18\x02"),
            _ld(15, _ld(2, b"bad") + b"\x18\xfe\xff\xff\xff\x0f"),
            _ld(15, b""),
            _ld(15, b"\x08\x01"),
        ]
    ),
    st.tuples(st.integers(0, 1 << 64 - 1), st.text(max_size=4), st.lists(KEY_VALUES, max_size=2)).map(
        lambda t: _ld(
            11, b"\x09" + t[0].to_bytes(8, "little") + _ld(2, t[1].encode()) + b"".join(_ld(3, kv) for kv in t[2])
        )
    ),
    st.tuples(st.binary(max_size=17), st.lists(KEY_VALUES, max_size=2), st.integers(0, 1 << 40)).map(
        lambda t: _ld(13, _ld(1, t[0]) + b"".join(_ld(4, kv) for kv in t[1]) + b"\x28" + _varint(t[2]))
    ),
    WIRE,
)


@st.composite
def limit_requests(draw) -> bytes:
    """Requests whose spans sit around the limits of ``SMALL_LIMITS``: 0-6 attributes, sizes from
    a few to a few hundred bytes, wire forms protobuf rewrites to another size."""
    spans = []
    for _ in range(draw(st.integers(1, 3))):
        body = _ld(1, draw(st.sampled_from([b"\x01" * 16, b"\x02" * 16])))
        body += _ld(2, draw(st.one_of(st.binary(min_size=8, max_size=8).filter(any), SPAN_IDS)))
        body += b"\x39" + (NOW - 10).to_bytes(8, "little") + b"\x41" + (NOW - 5).to_bytes(8, "little")
        body += b"".join(draw(st.lists(SPAN_FIELDS, max_size=8)))
        spans.append(body)
    scope = b"".join(_ld(2, s) for s in spans)
    resource = _ld(1, _ld(1, _ld(1, b"service.name") + _ld(2, _ld(1, b"cart"))))
    request = _ld(1, resource + _ld(2, scope))
    return draw(mutated(st.just(request))) if draw(st.integers(0, 4)) == 0 else request


SMALL_LIMITS = st.builds(
    lambda b, a: __import__("pipeline.codecs.interface", fromlist=["SpanLimits"]).SpanLimits(b, a),
    st.integers(1, 300),
    st.integers(0, 5),
)


@SETTINGS
@given(st.lists(limit_requests(), min_size=1, max_size=4), SMALL_LIMITS)
def test_otlp_span_limits_give_the_python_codecs_verdicts(values, limits):
    """``span_too_large`` on protobuf's re-encoded size (``Span.ByteSize()``), not the wire
    length, and ``too_many_attributes``, each only in a message long enough to break it — the
    same verdict and text as the Python codec, on spans around and over both limits."""
    assert_same_under("otlp_proto", values, limits)


@st.composite
def limit_batches(draw) -> bytes:
    spans = []
    for _ in range(draw(st.integers(1, 4))):
        attributes = {f"k{i}": "v" * draw(st.integers(0, 30)) for i in range(draw(st.integers(0, 6)))}
        detail = draw(
            st.one_of(
                st.just(avro.encode_detail({**avro.EMPTY_DETAIL, "attributes": attributes})),
                # hostile details (opaque at ingest): negative block counts and sizes moving the
                # reader backwards, negative string lengths, a block count of 70 bits, junk
                st.sampled_from(
                    [
                        b"\x00\x01\x7f\x06",
                        b"\x00\x01\x05" + b"\x00" * 8,
                        b"\x03\x02\x00" + b"\x00" * 6,
                        b"\x00" + b"\xff" * 9 + b"\x7f",
                        b"\x00\x03\x04\x00\x00\x00" + b"\x00" * 10,
                        b"\x00\x01\x0d" + b"\x01\x7f" * 8,
                    ]
                ),
                st.binary(max_size=40),
            )
        )
        spans.append(
            {
                "span_id": b"\x04" * 8,
                "parent_span_id": None,
                "name": draw(st.sampled_from(["GET /", "ü" * 20, "", "x" * 100])),
                "kind": "SERVER",
                "start_time_unix_nano": NOW - 10,
                "end_time_unix_nano": NOW - 5,
                "status_code": "OK",
                "trace_state": draw(st.sampled_from(["", "é=1"])),
                "detail": detail,
            }
        )
    return avro.encode_span_batch({"trace_id": b"\x07" * 16, "service": "cart", "spans": spans})


@SETTINGS
@given(st.lists(limit_batches(), min_size=1, max_size=4), SMALL_LIMITS)
def test_avro_span_limits_give_the_python_codecs_verdicts(values, limits):
    """Avro: a span's size is its detail's bytes plus its name's and trace state's characters; its
    attribute count is read from the detail's map block headers (any bytes: the Python reader's
    arithmetic on hostile ones included)."""
    assert_same_under("avro", values, limits)


def test_both_limits_hold_to_the_byte_and_to_the_attribute():
    """At the limit a span is taken, one over it is dead-lettered — with the Python codec's text."""
    from pipeline.codecs.interface import SpanLimits

    req = ExportTraceServiceRequest()
    sp = req.resource_spans.add().scope_spans.add().spans.add()
    sp.trace_id, sp.span_id = b"\x01" * 16, b"\x02" * 8
    sp.start_time_unix_nano, sp.end_time_unix_nano = NOW - 10, NOW - 5
    for i in range(5):
        sp.attributes.add(key=f"k{i}").value.string_value = "v" * 20
    value, size = req.SerializeToString(), sp.ByteSize()
    batch = avro.encode_span_batch(
        {
            "trace_id": b"\x01" * 16,
            "service": "s",
            "spans": [
                {
                    "span_id": b"\x02" * 8,
                    "parent_span_id": None,
                    "name": "ü",
                    "kind": "SERVER",
                    "start_time_unix_nano": NOW - 10,
                    "end_time_unix_nano": NOW - 5,
                    "status_code": "OK",
                    "trace_state": "",
                    "detail": avro.encode_detail(
                        {**avro.EMPTY_DETAIL, "attributes": {f"k{i}": "v" * 20 for i in range(5)}}
                    ),
                }
            ],
        }
    )
    avro_size = len(avro.decode_batch(batch)["spans"][0]["detail"]) + 1
    for fmt, message, span_size in (("otlp_proto", value, size), ("avro", batch, avro_size)):
        verdicts = [
            assert_same_under(fmt, [message], SpanLimits(max_span_bytes, max_attributes))[0]
            for max_span_bytes, max_attributes in (
                (span_size, 5),
                (span_size - 1, 5),
                (1 << 20, 4),
            )
        ]
        assert isinstance(verdicts[0], list) and verdicts[0][0].span_count == 1
        assert (verdicts[1].reason, verdicts[2].reason) == ("span_too_large", "too_many_attributes")
        assert f"is {span_size} bytes encoded, over ingest.max_span_bytes = {span_size - 1}" in verdicts[1].detail
        assert "has 5 attributes, over ingest.max_attributes_per_span = 4" in verdicts[2].detail


def test_the_native_core_decides_long_messages_itself():
    """The old ``NativeCodec`` handed every message longer than ``min(max_span_bytes, 2 ×
    max_attributes)`` — 2,000 bytes with the default limits, so every 10-span request of the peer
    benchmark — to the Python codec (observed: 8 of 8 generated OTLP messages decoded by it, the
    native reader never used). Now the Rust readers check the limits and take them all."""
    from pipeline.codecs.interface import SpanLimits
    from pipeline.config import IngestConfig

    ingest = IngestConfig()
    limits = SpanLimits(ingest.max_span_bytes, ingest.max_attributes_per_span)
    long_otlp = [v for v in GENERATED_OTLP if len(v) > 2 * ingest.max_attributes_per_span]
    long_avro = [v for v in GENERATED_AVRO if len(v) > 2 * ingest.max_attributes_per_span]
    assert long_otlp and long_avro
    for fmt, values in (("otlp_proto", long_otlp), ("avro", long_avro)):
        mine = codecs.for_format(fmt, BOUNDS, limits, core="native")
        mine.python = CountingCodec(mine.python)
        got = decode_each(mine, values, NOW)
        assert mine.python.decoded == [] and all(isinstance(r, list) and r for r in got)
        assert_same_under(fmt, values, limits)


class CountingCodec:
    """A codec that notes every message its ``decode`` is asked for."""

    def __init__(self, codec):
        self.codec, self.decoded = codec, []

    def __getattr__(self, name):
        return getattr(self.codec, name)

    def decode(self, value, now_ns):
        self.decoded.append(value)
        return self.codec.decode(value, now_ns)
