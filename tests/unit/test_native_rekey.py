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


def test_keyed_traffic_on_its_partition_stays_and_the_rest_is_rekeyed():
    """The peer benchmark's shapes: a message keyed by its trace's hex ID on the Collector's
    partition stays (its header fragments come back); the same message on another partition, and
    every unkeyed 200-span request, is re-keyed — one copy per trace, on that trace's partition."""
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
    traces = otlp.decode_traces(PEER_UNKEYED[0])
    assert [(k, p) for k, p, _ in got[2].parts] == [(t.hex().encode(), COLLECTOR.partition(t, 6)) for t in traces]
    assert assert_same_placement(msgs, COLLECTOR, 6, 1 << 20) == 2


def test_rekeying_in_the_job_parses_no_request_in_python(monkeypatch):
    """The job with the native core re-keys unkeyed OTLP without the Python codec: before, each
    multi-trace request was parsed with protobuf and every trace's part re-encoded in Python
    (``NativeCodec.split`` → ``otlp.decode_traces`` + ``split_request``: one parse and one
    split per request and trace, ~40 µs per span of the job core's 66 on the peer benchmark)."""
    from pipeline.job import Job
    from tests.support.jobs import make_config

    values = PEER_UNKEYED[:5]
    want = [(t.hex().encode(), COLLECTOR.partition(t, 6)) for v in values for t in otlp.decode_traces(v)]
    calls = {"decode_traces": 0, "split_request": 0}
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
    assert calls == {"decode_traces": 0, "split_request": 0}
    assert [(r.key, r.partition) for r in copies] == want
