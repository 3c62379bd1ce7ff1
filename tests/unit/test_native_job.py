"""The job core with ``job.core: native`` against ``job.core: python`` on the same input: every
output record (topic, key, value, partition, the input offsets it holds), in order, and the offsets
that become committable, must be the same.

The native core changes only *how* messages are decoded — at ingest (the Rust readers, with the
span limits) and at the decision (the buffered messages of every trace due in one ``collect``
read again in one call; the Python codec decodes only kept traces, for their output) — never
what the job writes. Traffic: the peer benchmark's OTLP (keyed, and unkeyed 200-span requests
that are re-keyed), the generator's Avro, each with late copies of decided traces and a trace
limit that seals traces during ingest; policies on status, latency, probability and an attribute
(decoded from the native header's bytes), with privacy on.
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from operators.privacy import KeyRing, Tokenizer  # noqa: F401 - the protector's key ring below
from pipeline.chaos import fuzz
from pipeline.codecs import avro, native, otlp
from pipeline.generator.callgraph import TraceGenerator
from pipeline.job import Job, Received
from pipeline.kafka.partitioner import COLLECTOR
from pipeline.peerbench import traffic as peer_traffic
from pipeline.privacy import build_protector
from tests.support.jobs import MS, make_config

if not native.AVAILABLE:
    pytest.skip("the native core is not built (no Rust toolchain)", allow_module_level=True)

START = 1_700_000_000_000_000_000
PARTITIONS = 3
BATCH = 100
KEYS = {"TAILSIFT_TOKEN_KEYS": "k1:" + bytes(range(32)).hex()}
POLICIES = [
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
    {"name": "slow", "type": "latency", "threshold_ms": 500},
    # read from each span's detail: protobuf Span bytes (native) or the parsed Span (Python)
    {"name": "route", "type": "string_attribute", "key": "http.route", "values": ["/api/checkout"]},
    {"name": "baseline", "type": "probabilistic", "sampling_percentage": 5},
]


def make_job(core: str, fmt: str, assemble: dict | None = None, rekey: bool = True) -> Job:
    sections = {
        "job": {"core": core, "processing_guarantee": "exactly_once"},
        "ingest": {"format": fmt, "rekey": rekey} | ({"partitioning": "collector"} if fmt != "avro" else {}),
        "emit": {"format": fmt},
        # big traces sealed in ingest
        "assemble": {"decision_wait_ms": 1000, "max_spans_per_trace": 40} | (assemble or {}),
        "sampling": {"policies": POLICIES},
        "privacy": {"enabled": True},
    }
    cfg = make_config(**sections)
    job = Job(cfg, worker_id="w", protector=build_protector(cfg.privacy, KEYS))
    job.input_partitions = PARTITIONS
    return job


def many_attributes(fmt: str) -> bytes:
    """A valid message but for one span with 1,001 attributes (``ingest.max_attributes_per_span``
    is 1,000; the chaos suite's 10,000 are over ``max_span_bytes`` too in Avro, checked first)."""
    attributes = {f"k{i}": i for i in range(1_001)}
    tid, head = b"\x05" * 16, {"span_id": b"\x06" * 8, "name": "op", "trace_state": ""}
    times = {"start_time_unix_nano": START - 10 * MS, "end_time_unix_nano": START - 5 * MS}
    if fmt == "avro":
        detail = avro.encode_detail({**avro.EMPTY_DETAIL, "attributes": attributes})
        span = {**head, **times, "parent_span_id": None, "kind": "SERVER", "status_code": "OK", "detail": detail}
        return avro.encode_span_batch({"trace_id": tid, "service": "s", "spans": [span]})
    return otlp.encode_request(
        [{"trace_id": tid, "service": "s", "spans": [{**head, **times, "attributes": attributes}]}], fmt
    )


def _interleave(values: list, hostile: list) -> list:
    """``hostile`` spread evenly among ``values``."""
    out, n = [], len(values)
    for i, value in enumerate(values):
        out.append(value)
        out.extend(hostile[i * len(hostile) // n : (i + 1) * len(hostile) // n])
    return out


def placed(values: list[tuple[bytes | None, bytes]], collector: bool, fmt: str) -> list[Received]:
    """On partitions as a producer put them, with the chaos suite's hostile messages among them
    (a span over ``ingest.max_span_bytes``, one with 10,000 attributes, bad ids, junk)."""
    kinds: dict[str, bytes | None] = {}
    for h in fuzz.messages(400, fmt, seed=3):
        kinds.setdefault(h.kind, h.value)  # the first of each kind, and a few of the commonest
    hostile = [(None, value) for value in kinds.values()] + [(None, h.value) for h in fuzz.messages(40, fmt, seed=4)]
    hostile.append((None, many_attributes(fmt)))
    values = _interleave(values, hostile)
    out, offsets = [], [0] * PARTITIONS
    for i, (key, value) in enumerate(values):
        if key is None:
            p = i % PARTITIONS
        else:
            p = COLLECTOR.partition(bytes.fromhex(key.decode()), PARTITIONS) if collector else key[0] % PARTITIONS
        out.append(Received(p, offsets[p], key, value, ref=(p, offsets[p])))
        offsets[p] += 1
    return out


def comparable(record, otlp_proto: bool):
    """A record's value; a dead letter's decoded, without the text of an Avro ``decode_error``
    (fastavro's exception message on one side, the Rust reader's on the other: the one known
    difference, see test_native_differential.py). OTLP re-keyed copies and kept traces are compared
    parsed: the native core splits a request from its spans' own bytes, the Python one re-encodes
    them, so where the producer wrote a span's fields out of number order (this traffic does) the
    bytes differ and the messages do not (test_native_rekey.py)."""
    if otlp_proto and record.topic in ("spans.raw", "traces.kept"):
        return ExportTraceServiceRequest.FromString(record.value)
    if record.topic != "spans.deadletter":
        return record.value
    letter = avro.decode(avro.DEAD_LETTER, record.value)
    if letter["reason"] == "decode_error" and letter["detail"].startswith("not a span_batch.v1 record: "):
        letter["detail"] = "not a span_batch.v1 record: …"
    return letter


def run(job: Job, msgs: list[Received]) -> list[tuple]:
    """Ingest in batches on a simulated clock, collecting every few batches (re-keyed copies come
    back as input, as from the topic), then the first 30 messages again as late copies; every record
    written and every committable offset, in order."""
    log: list[tuple] = []
    offsets = [max((m.offset for m in msgs if m.partition == p), default=-1) + 1 for p in range(PARTITIONS)]
    queue = list(msgs)
    now = START
    otlp_proto = job.ingest_format == "otlp_proto"

    def collect(flush: bool = False) -> None:
        out = job.collect(now, flush_all_windows=flush)
        for r in out.records:
            log.append(
                (
                    r.topic,
                    r.key,
                    comparable(r, otlp_proto),
                    r.partition,
                    sorted((h.partition, h.offset) for h in r.holds),
                )
            )
            if r.topic == job.input_topic:
                p = r.partition if r.partition is not None else 0
                queue.append(Received(p, offsets[p], r.key, r.value, ref=(p, offsets[p])))
                offsets[p] += 1
        log.append(("outbox", out.kept_traces, out.dropped_traces, sorted(out.checkpoints.items())))
        job.delivered(out.records)
        log.append(("ready", [h.offset for h in job.ready()]))

    i = n = 0
    while i < len(queue) or len(job.assembler):
        if i < len(queue):
            job.ingest(queue[i : i + BATCH], now)
            i += BATCH
        n += 1
        now += 300 * MS
        if n % 3 == 0 or i >= len(queue):
            collect(flush=i >= len(queue))
    for m in msgs[:30]:  # late copies: kept traces' fragments follow their decision (late kept records)
        p = m.partition
        queue.append(Received(p, offsets[p], m.key, m.value, ref=(p, offsets[p])))
        offsets[p] += 1
    job.ingest(queue[i:], now)
    now += 2000 * MS
    collect(flush=True)
    return log


def peer_messages(unkeyed: bool) -> list[Received]:
    keyed, unkeyed_traffic = peer_traffic.generate(300, start_ns=START, big_traces=1, big_trace_spans=300)
    traffic = unkeyed_traffic if unkeyed else keyed
    return placed(traffic.messages, collector=True, fmt="otlp_proto")


def avro_messages() -> list[Received]:
    gen = TraceGenerator()
    values = [v for i in range(150) for v in gen.trace(START + i * 3 * MS).encoded]
    return placed([(avro.decode_batch(v)["trace_id"], v) for v in values], collector=False, fmt="avro")


@pytest.mark.parametrize(
    "fmt,messages,assemble,rekey",
    [
        ("otlp_proto", lambda: peer_messages(unkeyed=False), None, True),
        ("otlp_proto", lambda: peer_messages(unkeyed=True), None, True),
        ("avro", avro_messages, None, True),
        # the native OTLP ingest hands the assembler a fragment's root and newest end, not its spans:
        # decisions at the root's quiet gap, and in event time on the watermarks those ends move
        ("otlp_proto", lambda: peer_messages(unkeyed=False), {"root_quiet_gap_ms": 200}, True),
        ("otlp_proto", lambda: peer_messages(unkeyed=False), {"time": "event", "idle_partition_ms": 3000}, True),
        ("otlp_proto", lambda: peer_messages(unkeyed=True), None, False),
    ],
    ids=["otlp-keyed", "otlp-unkeyed", "avro", "otlp-root-quiet", "otlp-event-time", "otlp-no-rekey"],
)
def test_native_and_python_cores_write_the_same_records(fmt, messages, assemble, rekey):
    msgs = messages()
    python, mine = make_job("python", fmt, assemble, rekey), make_job("native", fmt, assemble, rekey)
    assert python.codec.__class__.__name__ != "NativeCodec" and isinstance(mine.codec, native.NativeCodec)
    calls = {"python": 0, "native": 0, "rust": 0}

    def counted(codec, side):
        decode_trace = codec.decode_trace

        def wrapper(value, trace_id):
            calls[side] += 1
            return decode_trace(value, trace_id)

        return wrapper

    python.codec.decode_trace = counted(python.codec, "python")
    mine.codec.python.decode_trace = counted(mine.codec.python, "native")
    trace_facts = mine.codec.trace_facts
    mine.codec.trace_facts = lambda values, trace_ids, counts: (
        calls.update(rust=calls["rust"] + len(values)) or (trace_facts(values, trace_ids, counts))
    )
    want = run(python, msgs)
    got = run(mine, msgs)
    # every decided message read again in Rust; the Python codec decodes kept ones only — with the
    # native kept writer (otlp_proto out) only late kept fragments, which keyed traffic may not have
    assert calls["rust"] >= calls["python"] > 2 * calls["native"], calls
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"entry {i}: {g[:2]} != {w[:2]}"
    # the service graph: native pairs (per chunk of due traces, from Rust) = the span dicts' pairs
    edges = [
        [(e.client, e.server, e.requests, e.failed, e.latency_sum_ns) for e in j.graph.drain()] for j in (python, mine)
    ]
    assert edges[0] == edges[1] and len(edges[0]) >= 5
    # the traffic exercised what it should: kept and dropped traces, late kept records, dead letters
    topics = [e[0] for e in want]
    kept = sum(e[1] for e in want if e[0] == "outbox")
    dropped = sum(e[2] for e in want if e[0] == "outbox")
    assert kept >= 10 and dropped >= 50, (kept, dropped)
    assert {"traces.kept", "traces.decisions", "sli.windows", "pii.audit", "spans.deadletter"} <= set(topics)
    reasons = {e[2]["reason"] for e in want if e[0] == "spans.deadletter"}
    assert {"span_too_large", "too_many_attributes", "decode_error"} <= reasons, reasons
