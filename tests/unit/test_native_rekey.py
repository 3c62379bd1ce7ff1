"""Re-keying in the native core (``native/src/rekey.rs``, ``NativeCodec.decode_placed``) against
the Python reference (``pipeline.job.rekey.place`` over the Python codec's decode).

For the same received messages — generated requests, the peer benchmark's unkeyed 200-span
requests, hostile and random bytes — under either placement (murmur2 of the raw trace ID, or the
Collector's FNV-1a of its hex), with the partition count known or not and a record limit small
enough to refuse some copies: both give the same verdict (reason and detail), the same fragments
for a message that stays, or the same copies — same keys, same partitions, requests that parse to
the same messages. The bytes of a copy are the reference's exactly when the request was written
canonically (fields in number order, each once: what any protobuf serializer writes); otherwise
the native copy carries each span's and resource's bytes as they came, where the reference
re-encodes them. That cannot change what the job does with a copy: it is read back only as a
protobuf message (decode, the decision's re-decode, the kept path), and the one place a message's
length counts on the way in, the span-limit gates of ``SpanLimits``, only decides whether spans
are measured — a span over a limit is over it in canonical form too, which no request holding it
can be shorter than, so both sides measure it.
"""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline import codecs
from pipeline.codecs import decode_each, native, otlp
from pipeline.codecs.interface import Malformed, Rekeyed
from pipeline.job import rekey
from pipeline.job.records import Received
from pipeline.kafka.partitioner import COLLECTOR, PARTITIONINGS, TAILSIFT

if not native.AVAILABLE:
    if shutil.which("cargo"):
        pytest.fail("cargo is installed but pipeline._native did not build (pip install -e . output)", pytrace=False)
    pytest.skip("the native core is not built (no Rust toolchain)", allow_module_level=True)

from tests.unit.test_native_differential import (  # noqa: E402 - after the skip
    AVRO_MESSAGES,
    BOUNDS,
    GENERATED_AVRO,
    GENERATED_OTLP,
    NOW,
    OTLP_MESSAGES,
    _varint,
    comparable,
    otlp_requests,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _peer_unkeyed() -> list[bytes]:
    from pipeline.peerbench import traffic as peer_traffic

    _, unkeyed = peer_traffic.generate(120, start_ns=NOW - 5_000_000_000, big_traces=0)
    return [value for _, value in unkeyed.messages]


PEER_UNKEYED = _peer_unkeyed()


def first_trace_id(value: bytes | None) -> bytes | None:
    try:
        req = otlp.parse_request(value or b"")
    except DecodeError:
        return None
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                return sp.trace_id
    return None


@st.composite
def received(draw, values: st.SearchStrategy, fmt: str = "otlp_proto") -> Received:
    """A message as a producer may have put it: keyed by its first trace ID (raw or hex), by
    something else or not at all, on any of 6 partitions."""
    value = draw(values)
    # a SpanBatch starts with its trace ID (16 bytes, fixed)
    trace_id = first_trace_id(value) if fmt == "otlp_proto" else (value[:16] if value and len(value) >= 16 else None)
    keys: list[bytes | None] = [None, b"k", b"\x00" * 16]
    if trace_id is not None:
        keys += [trace_id, trace_id.hex().encode(), trace_id.hex().upper().encode()]
    return Received(draw(st.integers(0, 5)), 0, draw(st.sampled_from(keys)), value)


def python_placed(
    msgs: list[Received], placement, partitions: int, max_record_bytes: int, now_ns: int, fmt: str = "otlp_proto"
) -> list:
    """What ``job.core: python`` does: the Python codec's verdicts and fragments, placed by
    ``pipeline.job.rekey.place``."""
    codec = codecs.for_format(fmt, BOUNDS)
    out = []
    for msg, result in zip(msgs, decode_each(codec, [m.value for m in msgs], now_ns)):
        if not isinstance(result, Malformed):
            result = rekey.place(codec, placement, partitions, max_record_bytes, msg, result)
        out.append(result)
    return out


def canonical(value: bytes) -> bool:
    return ExportTraceServiceRequest.FromString(value).SerializeToString() == value


def assert_same_placement(
    msgs: list[Received],
    placement,
    partitions: int,
    max_record_bytes: int,
    now_ns: int = NOW,
    fmt: str = "otlp_proto",
) -> int:
    """Native against Python for one batch; returns how many messages were re-keyed."""
    mine = native.NativeCodec(fmt, BOUNDS).decode_placed(
        msgs, now_ns, placement, partitions, max_record_bytes, rekey.max_copies_bytes(max_record_bytes)
    )
    want = python_placed(msgs, placement, partitions, max_record_bytes, now_ns, fmt)
    assert len(mine) == len(want) == len(msgs)
    rekeyed = 0
    for msg, got, ref in zip(msgs, mine, want):
        where = (msg.key, msg.partition, (msg.value or b"")[:120])
        assert type(got) is type(ref), where
        if not isinstance(ref, Rekeyed):
            assert comparable(fmt, got, True) == comparable(fmt, ref, False), where
            continue
        if ref.parts is None:  # too large to re-key: both keep its fragments where it arrived
            assert got.parts is None, where
            assert comparable(fmt, got.fragments, True) == comparable(fmt, ref.fragments, False)
            continue
        rekeyed += 1
        assert [(k, p) for k, p, _ in got.parts] == [(k, p) for k, p, _ in ref.parts], where
        if fmt == "avro":  # one trace per message: its copy is the message itself
            assert len(got.parts) == 1 and got.parts[0][2] is msg.value, where
            continue
        for (_, _, mine_part), (_, _, ref_part) in zip(got.parts, ref.parts):
            assert ExportTraceServiceRequest.FromString(mine_part) == ExportTraceServiceRequest.FromString(ref_part)
            if canonical(msg.value):
                assert mine_part == ref_part, where
        if len(got.parts) == 1:
            assert got.parts[0][2] is msg.value  # one trace: the message itself, not a copy
    return rekeyed


PLACEMENTS = st.sampled_from([TAILSIFT, COLLECTOR])
PARTITIONS = st.sampled_from([0, 1, 6, 12])
LIMITS = st.sampled_from([1 << 20, 300, 60])


# ------------------------------------------------------------------ the partitioner
@SETTINGS
@given(st.binary(min_size=0, max_size=40), st.integers(1, 1000), st.sampled_from(["tailsift", "collector"]))
def test_the_native_partitioner_is_the_python_one(trace_id, partitions, scheme):
    assert native._core.canonical_partition(scheme, trace_id, partitions) == PARTITIONINGS[scheme].partition(
        trace_id, partitions
    )


def test_the_partitioner_on_16_byte_ids_of_every_partition():
    ids = [hashlib.sha256(bytes([i])).digest()[:16] for i in range(256)]
    for scheme, placement in PARTITIONINGS.items():
        got = [native._core.canonical_partition(scheme, t, 12) for t in ids]
        assert got == [placement.partition(t, 12) for t in ids]
        assert len(set(got)) == 12  # every partition reached


# ------------------------------------------------------------------ the split
def reference_split(value: bytes) -> dict[bytes, bytes]:
    """``otlp.split_request`` per trace, grouped as ``otlp.decode_traces`` groups (without its id
    checks: the split alone)."""
    traces: dict[bytes, otlp.OtlpTrace] = {}
    for rs in otlp.parse_request(value).resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                trace = traces.setdefault(sp.trace_id, otlp.OtlpTrace(sp.trace_id))
                if trace.groups and trace.groups[-1][1] is ss:
                    trace.groups[-1][3].append({"detail": sp})
                else:
                    trace.groups.append([rs, ss, "", [{"detail": sp}]])
    return {trace_id: otlp.split_request(trace) for trace_id, trace in traces.items()}


@SETTINGS
@given(otlp_requests())
def test_a_canonical_request_splits_to_the_references_bytes(value):
    assert native._core.split_otlp(value) == list(reference_split(value).items())


def test_the_peer_benchmarks_requests_split_to_the_same_messages():
    """Its traffic writes a span's status before its attributes (not number order): the copies'
    bytes differ from the reference's re-encoding, the messages they parse to do not."""
    differing = multi = 0
    for value in PEER_UNKEYED:
        traces = otlp.decode_traces(value)
        mine = native._core.split_otlp(value)
        assert [t for t, _ in mine] == list(traces)
        multi += len(traces) > 1
        for (_, part), trace in zip(mine, traces.values()):
            ref = otlp.split_request(trace)
            differing += part != ref
            assert ExportTraceServiceRequest.FromString(part) == ExportTraceServiceRequest.FromString(ref)
            assert otlp.decode_traces(part).keys() == {trace.trace_id}
    assert differing and multi >= len(PEER_UNKEYED) - 1  # multi-trace, non-canonical: exercised


def test_envelopes_without_resource_or_scope_and_repeated_ones():
    """A resource_spans without resource (or a scope_spans without scope) gets an empty one, as the
    reference's ``CopyFrom`` makes it present; repeated resource/scope occurrences are copied as
    they came and merge when parsed; schema URLs: the last one wins."""

    def ld(n: int, body: bytes) -> bytes:
        return _varint(n << 3 | 2) + _varint(len(body)) + body

    def span(t: int) -> bytes:
        times = b"\x39" + (NOW - 9).to_bytes(8, "little") + b"\x41" + (NOW - 5).to_bytes(8, "little")
        return ld(1, bytes([t]) * 16) + ld(2, b"\x02" * 8) + times

    res_a = ld(1, ld(1, b"service.name") + ld(2, ld(1, b"cart")))
    res_b = ld(1, ld(1, b"host") + ld(2, ld(1, b"h1")))
    scoped = ld(1, ld(1, b"lib")) + ld(2, span(1)) + ld(3, b"s1") + ld(2, span(2)) + ld(1, ld(2, b"v2")) + ld(3, b"s2")
    bare = ld(2, span(2)) + ld(2, span(1))
    rs = ld(1, res_a) + ld(2, scoped) + ld(3, b"u1") + ld(2, bare) + ld(1, res_b) + ld(3, b"u2")
    value = ld(1, rs) + ld(1, ld(2, ld(2, span(1))))  # a second resource_spans, no resource
    msgs = [Received(0, 0, None, value)]
    assert assert_same_placement(msgs, TAILSIFT, 6, 1 << 20) == 1
    (got,) = native.NativeCodec("otlp_proto", BOUNDS).decode_placed(msgs, NOW, TAILSIFT, 6, 1 << 20, 16 << 20)
    first = ExportTraceServiceRequest.FromString(got.parts[0][2])
    assert [len(r.scope_spans[0].spans) for r in first.resource_spans] == [1, 1, 1]
    assert first.resource_spans[0].schema_url == "u2" and first.resource_spans[0].scope_spans[0].schema_url == "s2"
    assert [kv.key for kv in first.resource_spans[0].resource.attributes] == ["service.name", "host"]
    assert first.resource_spans[0].scope_spans[0].scope.version == "v2"
    assert first.resource_spans[2].HasField("resource")


# ------------------------------------------------------------------ placement, as the job runs it
@SETTINGS
@given(
    st.lists(received(OTLP_MESSAGES), min_size=1, max_size=4),
    PLACEMENTS,
    PARTITIONS,
    LIMITS,
)
def test_valid_hostile_and_random_messages_are_placed_alike(msgs, placement, partitions, limit):
    assert_same_placement(msgs, placement, partitions, limit)


@SETTINGS
@given(
    st.lists(received(st.sampled_from(PEER_UNKEYED + GENERATED_OTLP)), min_size=1, max_size=6),
    PLACEMENTS,
    PARTITIONS,
    st.sampled_from([1 << 20, 2_000]),
)
def test_multi_trace_requests_are_placed_alike(msgs, placement, partitions, limit):
    assert_same_placement(msgs, placement, partitions, limit)


@pytest.mark.parametrize("placement", [TAILSIFT, COLLECTOR])
def test_the_chaos_suites_hostile_messages_are_placed_alike(placement):
    from pipeline.chaos import fuzz

    msgs = [Received(i % 6, i, h.key, h.value) for i, h in enumerate(fuzz.messages(300, "otlp_proto", seed=23))]
    now_ns = time.time_ns()  # the chaos messages are timed from the clock
    for i in range(0, len(msgs), 50):
        assert_same_placement(msgs[i : i + 50], placement, 6, 1 << 20, now_ns)


# ------------------------------------------------------------------ Avro: placement in the same call
@SETTINGS
@given(
    st.lists(received(st.one_of(AVRO_MESSAGES, st.sampled_from(GENERATED_AVRO)), "avro"), min_size=1, max_size=6),
    PLACEMENTS,
    PARTITIONS,
    st.sampled_from([1 << 20, 300, 60]),
)
def test_avro_messages_are_placed_alike(msgs, placement, partitions, limit):
    """``ingest_avro`` (``native/src/avro_ingest.rs``) against ``rekey.place`` over the Python
    Avro codec: valid, hostile and random SpanBatches, keyed right, wrong or not at all, on any
    partition, under either placement, with records small enough to refuse some copies."""
    assert_same_placement(msgs, placement, partitions, limit, fmt="avro")


@pytest.mark.parametrize("placement", [TAILSIFT, COLLECTOR])
def test_the_chaos_suites_hostile_avro_messages_are_placed_alike(placement):
    from pipeline.chaos import fuzz

    msgs = [Received(i % 6, i, h.key, h.value) for i, h in enumerate(fuzz.messages(300, "avro", seed=29))]
    now_ns = time.time_ns()  # the chaos messages are timed from the clock
    for i in range(0, len(msgs), 50):
        assert_same_placement(msgs[i : i + 50], placement, 6, 1 << 20, now_ns, fmt="avro")


def test_avro_in_the_job_is_placed_without_python_per_message(monkeypatch):
    """The job with the native core places Avro messages in the decode call: before, every
    accepted message went through ``rekey.place`` → ``misplaced`` → murmur2 in Python (~1 µs per
    message). A message on its trace's partition stays; the same message elsewhere, or keyed by
    something else, moves as it is to that partition."""
    from pipeline.job import Job
    from tests.support.jobs import make_config

    calls = []
    monkeypatch.setattr(rekey, "place", lambda *args: calls.append(args))
    cfg = make_config(job={"core": "native"}, ingest={"format": "avro", "rekey": True})
    job = Job(cfg, worker_id="w")
    job.input_partitions = 6
    value = GENERATED_AVRO[0]
    tid = value[:16]
    home = TAILSIFT.partition(tid, 6)
    job.ingest(
        [
            Received(home, 0, tid, value),
            Received((home + 1) % 6, 0, tid, value),
            Received(home, 1, b"other", value),
        ],
        NOW,
    )
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert calls == []
    assert [(r.key, r.partition, r.value) for r in copies] == [(tid, home, value)] * 2
    assert len(job.assembler) == 1  # the message that stayed is buffered


def bound_for(value: bytes, placement, partitions: int) -> list[tuple[int, list[bytes]]]:
    """A multi-trace request's destinations: per canonical partition its trace IDs, in the order
    the first of them appears in the request."""
    out: dict[int, list[bytes]] = {}
    for t in otlp.decode_traces(value):
        out.setdefault(placement.partition(t, partitions), []).append(t)
    return list(out.items())


def trace_spans(value: bytes) -> list[tuple[bytes, bytes]]:
    """A request's spans as (trace ID, span ID), in message order."""
    req = otlp.parse_request(value)
    return [(sp.trace_id, sp.span_id) for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]


def test_keyed_traffic_on_its_partition_stays_and_the_rest_is_rekeyed():
    """The peer benchmark's shapes: a message keyed by its trace's hex ID on the Collector's
    partition stays (its header fragments come back); the same message on another partition is
    re-keyed as it is; an unkeyed 200-span request (~25 traces) is re-keyed one copy per
    destination partition — before, one per trace (25 copies, each repeating its resources) —,
    holding exactly the spans of its traces in message order, keyless unless it holds one trace."""
    tid = first_trace_id(GENERATED_OTLP[0])
    home = COLLECTOR.partition(tid, 6)
    msgs = [
        Received(home, 0, tid.hex().encode(), GENERATED_OTLP[0]),
        Received((home + 1) % 6, 0, tid.hex().encode(), GENERATED_OTLP[0]),
        Received(0, 1, None, PEER_UNKEYED[0]),
    ]
    got = native.NativeCodec("otlp_proto", BOUNDS).decode_placed(msgs, NOW, COLLECTOR, 6, 1 << 20, 16 << 20)
    assert isinstance(got[0], list) and got[0][0].trace_id == tid
    assert got[1].parts == [(tid.hex().encode(), home, GENERATED_OTLP[0])]
    bound = bound_for(PEER_UNKEYED[0], COLLECTOR, 6)
    assert len(otlp.decode_traces(PEER_UNKEYED[0])) >= 20 and len(bound) == 6  # ~25 traces, 6 copies
    assert [(k, p) for k, p, _ in got[2].parts] == [
        (ts[0].hex().encode() if len(ts) == 1 else None, p) for p, ts in bound
    ]
    spans = trace_spans(PEER_UNKEYED[0])
    for (_, _, part), (_, ts) in zip(got[2].parts, bound):
        assert trace_spans(part) == [s for s in spans if s[0] in ts]
    assert assert_same_placement(msgs, COLLECTOR, 6, 1 << 20) == 2


def test_rekeying_in_the_job_parses_no_request_in_python(monkeypatch):
    """The job with the native core re-keys unkeyed OTLP without the Python codec: before, each
    multi-trace request was parsed with protobuf and every trace's part re-encoded in Python
    (``NativeCodec.split`` → ``otlp.decode_traces`` + ``split_request``: one parse and one
    split per request and trace, ~40 µs per span of the job core's 66 on the peer benchmark)."""
    from pipeline.job import Job
    from tests.support.jobs import make_config

    values = PEER_UNKEYED[:5]
    want = [(ts[0].hex().encode() if len(ts) == 1 else None, p) for v in values for p, ts in bound_for(v, COLLECTOR, 6)]
    calls = {"decode_traces": 0, "split_request": 0, "split_traces": 0}
    for name in calls:
        real = getattr(otlp, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(otlp, name, counted)
    cfg = make_config(
        job={"core": "native"}, ingest={"format": "otlp_proto", "rekey": True, "partitioning": "collector"}
    )
    job = Job(cfg, worker_id="w")
    job.input_partitions = 6
    job.ingest([Received(i % 6, i // 6, None, v) for i, v in enumerate(values)], NOW)
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert calls == {"decode_traces": 0, "split_request": 0, "split_traces": 0}
    assert [(r.key, r.partition) for r in copies] == want


# ------------------------------------------------------------------ one copy per destination partition
POOL = [hashlib.sha256(b"group %d" % i).digest()[:16] for i in range(400)]


def ids_on(placement, partitions: int, home: int, n: int) -> list[bytes]:
    """``n`` trace IDs whose canonical partition of ``partitions`` is ``home``."""
    got = [t for t in POOL if placement.partition(t, partitions) == home][:n]
    assert len(got) == n
    return got


def build(resources: list[tuple[str, list[list[bytes]]]]) -> bytes:
    """A request: per resource (service name, its scopes), per scope the trace IDs of its spans in
    order; every span valid (its own non-zero ID, times just before ``NOW``)."""
    req = ExportTraceServiceRequest()
    n = 0
    for service, scopes in resources:
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = service
        for i, traces in enumerate(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name = f"lib{i}"
            for tid in traces:
                n += 1
                sp = ss.spans.add(trace_id=tid, span_id=n.to_bytes(8, "big"), name=f"op{n}")
                sp.start_time_unix_nano, sp.end_time_unix_nano = NOW - 9_000_000 - n, NOW - 1_000_000
    return req.SerializeToString()


def services(value: bytes) -> list[tuple[str, str, int]]:
    """Per resource_spans of a request: (service, scope name, span count)."""
    out = []
    for rs in otlp.parse_request(value).resource_spans:
        for ss in rs.scope_spans:
            out.append((otlp._service(rs.resource), ss.scope.name, len(ss.spans)))
    return out


A, B = ids_on(TAILSIFT, 6, 1, 2)
(C,) = ids_on(TAILSIFT, 6, 4, 1)
# interleaved spans of three traces in one scope, and A and B again under a second resource
THREE = build([("cart", [[A, B, C, A]]), ("db", [[C, B], [A]])])


def test_three_traces_two_bound_for_one_partition_make_exactly_two_copies():
    """Old code: one copy per trace (3 here; ~25 for the peer benchmark's 200-span request),
    each repeating its resources. Now a 3-trace message with 2 traces bound for partition 1 and 1
    for partition 4 makes exactly 2 copies: A and B's spans together, in message order, one
    resource_spans per scope occurrence that holds any of them, without a key (the partition
    places it); C's alone under its own key — the copy it always got. Native and Python alike,
    byte for byte."""
    msgs = [Received(0, 0, None, THREE)]
    assert assert_same_placement(msgs, TAILSIFT, 6, 1 << 20) == 1
    (got,) = native.NativeCodec("otlp_proto", BOUNDS).decode_placed(msgs, NOW, TAILSIFT, 6, 1 << 20, 16 << 20)
    assert [(k, p) for k, p, _ in got.parts] == [(None, 1), (C, 4)]
    spans = trace_spans(THREE)
    ab, c = got.parts[0][2], got.parts[1][2]
    assert trace_spans(ab) == [s for s in spans if s[0] in (A, B)]
    assert trace_spans(c) == [s for s in spans if s[0] == C]
    assert services(ab) == [("cart", "lib0", 3), ("db", "lib0", 1), ("db", "lib1", 1)]
    assert services(c) == [("cart", "lib0", 1), ("db", "lib0", 1)]
    assert sorted(trace_spans(ab) + trace_spans(c)) == sorted(spans)  # nothing lost, nothing twice


def test_a_message_whose_traces_all_belong_where_it_sits_stays_whatever_its_key():
    """Issue 11 item 6: a message is re-keyed unless it already sits on its traces' canonical
    partition. Old code re-keyed every multi-trace message, one copy per trace, wherever it sat.
    Now one whose every trace belongs to the partition it sits on stays — unkeyed, keyed by
    something else or by one of its traces — and its fragments are buffered there; elsewhere it
    moves as it is, without a key, to that partition."""
    d, e, f = ids_on(TAILSIFT, 6, 2, 3)
    value = build([("cart", [[d, e, d]]), ("db", [[f, e]])])
    msgs = [Received(2, 0, key, value) for key in (None, b"k", d)] + [Received(5, 0, None, value)]
    assert assert_same_placement(msgs, TAILSIFT, 6, 1 << 20) == 1
    got = native.NativeCodec("otlp_proto", BOUNDS).decode_placed(msgs, NOW, TAILSIFT, 6, 1 << 20, 16 << 20)
    for stays in got[:3]:
        assert [fr.trace_id for fr in stays] == [d, e, f]
    assert got[3].parts == [(None, 2, value)] and got[3].parts[0][2] is value


@pytest.mark.parametrize("placement", [TAILSIFT, COLLECTOR])
def test_the_partition_count_unknown_keeps_one_keyed_copy_per_trace(placement):
    """Without the partition count (0) no destination is known: one copy per trace in first-seen
    order, under its canonical key, placed by the key, as before."""
    msgs = [Received(0, 0, None, THREE)]
    assert assert_same_placement(msgs, placement, 0, 1 << 20) == 1
    (got,) = native.NativeCodec("otlp_proto", BOUNDS).decode_placed(msgs, NOW, placement, 0, 1 << 20, 16 << 20)
    assert [(k, p) for k, p, _ in got.parts] == [(placement.key(t), None) for t in (A, B, C)]
    for (_, _, part), t in zip(got.parts, (A, B, C)):
        assert trace_spans(part) == [s for s in trace_spans(THREE) if s[0] == t]


@pytest.mark.parametrize("core", ["python", "native"])
def test_group_copies_read_back_stay_and_hold_every_span_once(core):
    """End to end in the job: the 3-trace message is re-keyed into exactly 2 copies (counted as one
    re-keyed message); read back on their partitions, both stay (the keyless one holds only
    partition 1's traces, the keyed one is keyed by its trace and on its partition): no copy of a
    copy, three traces buffered with every span once, every offset released."""
    from pipeline import metrics
    from pipeline.job import Job
    from tests.support.jobs import make_config

    job = Job(make_config(job={"core": core}, ingest={"format": "otlp_proto", "rekey": True}), worker_id="w")
    job.input_partitions = 6
    rekeyed = metrics.MESSAGES.labels("rekeyed")
    before = rekeyed._value.get()
    job.ingest([Received(0, 0, None, THREE, ref=0)], NOW)
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert [(r.key, r.partition) for r in copies] == [(None, 1), (C, 4)]
    assert rekeyed._value.get() == before + 1
    job.delivered(copies)
    assert [h.offset for h in job.ready()] == [0]
    job.ingest([Received(r.partition, 0, r.key, r.value, ref=1 + i) for i, r in enumerate(copies)], NOW)
    assert [r for r in job.collect(NOW).records if r.topic == job.input_topic] == []
    assert rekeyed._value.get() == before + 1
    assert len(job.assembler) == 3 and job.assembler.buffered_spans == len(trace_spans(THREE))


@st.composite
def multi_trace_messages(draw) -> Received:
    """Valid requests over a few trace IDs — interleaved in a scope, spread over resources — on
    any of 6 partitions, keyed by one of them, by something else or not at all."""
    pool = draw(st.lists(st.sampled_from(POOL[:12]), min_size=1, max_size=5, unique=True))
    resources = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["cart", "db"]),
                st.lists(st.lists(st.sampled_from(pool), min_size=0, max_size=5), min_size=1, max_size=2),
            ),
            min_size=1,
            max_size=3,
        )
    )
    value = build(resources)
    tids = [t for _, scopes in resources for ts in scopes for t in ts]
    keys = [None, b"k", *(t for t in tids[:1]), *(t.hex().encode() for t in tids[:1])]
    return Received(draw(st.integers(0, 5)), 0, draw(st.sampled_from(keys)), value)


@SETTINGS
@given(st.lists(multi_trace_messages(), min_size=1, max_size=4), PLACEMENTS, st.sampled_from([0, 6, 12]), LIMITS)
def test_group_copies_are_placed_alike_and_lose_nothing(msgs, placement, partitions, limit):
    """Native against Python (byte for byte: these requests are canonical) on multi-trace messages
    of every shape; and each re-keyed message's copies hold every one of its spans exactly once,
    each copy on the canonical partition of every trace in it, keyed by its trace when it holds
    one, keyless when several."""
    assert_same_placement(msgs, placement, partitions, limit)
    for msg, got in zip(msgs, python_placed(msgs, placement, partitions, limit, NOW)):
        if not isinstance(got, Rekeyed) or got.parts is None:
            continue
        spans = trace_spans(msg.value)
        assert sorted(s for _, _, part in got.parts for s in trace_spans(part)) == sorted(spans)
        for key, partition, part in got.parts:
            traces = {t for t, _ in trace_spans(part)}
            if partitions:
                assert {placement.partition(t, partitions) for t in traces} == {partition}
                assert key == (placement.key(next(iter(traces))) if len(traces) == 1 else None)
            else:
                assert len(traces) == 1 and partition is None and key == placement.key(next(iter(traces)))


def reference_traces(value: bytes) -> dict[bytes, otlp.OtlpTrace]:
    """``otlp.decode_traces``'s traces, without its id and time checks (the split alone)."""
    req = otlp.parse_request(value)
    traces: dict[bytes, otlp.OtlpTrace] = {}
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                trace = traces.setdefault(sp.trace_id, otlp.OtlpTrace(sp.trace_id, req))
                if trace.groups and trace.groups[-1][1] is ss:
                    trace.groups[-1][3].append({"detail": sp})
                else:
                    trace.groups.append([rs, ss, "", [{"detail": sp}]])
    return traces


@SETTINGS
@given(otlp_requests(), st.randoms(use_true_random=False))
def test_a_canonical_request_splits_into_groups_as_the_reference_does(value, rnd):
    """Any grouping of a request's traces (random ids, empty scopes and resources, repeated
    envelopes): the native copy of each group is ``otlp.split_traces``'s bytes exactly."""
    traces = reference_traces(value)
    ids = list(traces)
    rnd.shuffle(ids)
    groups, i = [], 0
    while i < len(ids):
        n = rnd.randint(1, 3)
        groups.append(ids[i : i + n])
        i += n
    want = [otlp.split_traces([traces[t] for t in g]) for g in groups]
    assert native._core.split_otlp_groups(value, groups) == want


def test_the_peer_benchmarks_requests_split_into_partition_groups_alike():
    """The non-canonical traffic: per destination partition, copies that parse to the reference's."""
    for value in PEER_UNKEYED[:40]:
        traces = reference_traces(value)
        groups = [ts for _, ts in bound_for(value, COLLECTOR, 6)]
        mine = native._core.split_otlp_groups(value, groups)
        for part, g in zip(mine, groups):
            ref = otlp.split_traces([traces[t] for t in g])
            assert ExportTraceServiceRequest.FromString(part) == ExportTraceServiceRequest.FromString(ref)
