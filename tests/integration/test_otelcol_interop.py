"""tailsift between two real OpenTelemetry Collectors (the pinned build, deploy/otelcol/), on the real
broker, with the Collector configs the README shows (deploy/otelcol/collector-{front,back}.yaml,
run as they are; only the back one's exporter is swapped for a file exporter, by a second --config):

  OTel SDK --OTLP/gRPC--> Collector (otlp → batch → kafka, partition_traces_by_id true | false)
    → spans.raw → tailsift run (otlp_proto in and out, privacy on)
    → traces.kept → Collector (kafka receiver → file exporter, OTLP JSON) → the file this test reads.

Policies: every error trace, plus a 25 % probabilistic baseline, so the kept set is known exactly
from the trace IDs (OTEP 235: R = the low 56 bits, kept at 25 % iff R >= 0.75 · 2^56) and kept
spans carry both kinds of sampling annotation. A Collector that cannot be built fails the test."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import defaultdict

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import otelcol
from pipeline.codecs import otlp
from pipeline.demo import free_port, run_config
from pipeline.jobproc import JobProcess
from pipeline.kafka.partitioner import TAILSIFT, sarama_partition
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration
N_TRACES = 40
BASELINE_PERCENT = 25
THRESHOLD = (100 - BASELINE_PERCENT) * (1 << 56) // 100  # OTEP 235 rejection threshold
CANARY = "canary.otelcol.7f3a9c@example.org"
# the Collectors' own telemetry (default: a Prometheus endpoint on :8888) is not what this test
# watches, and two Collectors at once would both claim that port
NO_TELEMETRY = "yaml:service::telemetry::metrics::level: none"


@pytest.fixture(scope="session")
def otelcol_binary():
    try:
        return otelcol.build()
    except otelcol.CollectorError as exc:
        pytest.fail(f"the pinned OpenTelemetry Collector could not be built:\n{exc}", pytrace=False)


def wait_port(port: int, proc: otelcol.CollectorProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the front Collector's OTLP port {port} did not open; log:\n{proc.log_tail()}")


def send_traces(endpoint: str) -> tuple[dict[bytes, set[bytes]], set[bytes]]:
    """N_TRACES traces of 3 spans over two services through the SDK's OTLP/gRPC exporter; every
    fifth fails. Returns (trace ID → span IDs, error trace IDs) as the SDK recorded them."""
    recorded = InMemorySpanExporter()
    providers, tracers = [], []
    for service in ("storefront", "billing"):
        p = TracerProvider(resource=Resource.create({"service.name": service}))
        p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
        p.add_span_processor(SimpleSpanProcessor(recorded))
        providers.append(p)
        tracers.append(p.get_tracer("interop", "1.0"))
    front, billing = tracers
    errors = set()
    for i in range(N_TRACES):
        with front.start_as_current_span("GET /cart", kind=trace_api.SpanKind.SERVER) as root:
            root.set_attribute("user.email", CANARY)
            with front.start_as_current_span("POST billing", kind=trace_api.SpanKind.CLIENT):
                with billing.start_as_current_span("POST /charge", kind=trace_api.SpanKind.SERVER) as s:
                    s.set_attribute("enduser.id", CANARY)
                    if i % 5 == 0:
                        s.set_status(trace_api.Status(trace_api.StatusCode.ERROR, "card declined"))
                        errors.add(root.get_span_context().trace_id.to_bytes(16, "big"))
    for p in providers:
        assert p.force_flush(30_000), "the SDK could not export to the front Collector"
        p.shutdown()
    spans: dict[bytes, set[bytes]] = defaultdict(set)
    for s in recorded.get_finished_spans():
        spans[s.context.trace_id.to_bytes(16, "big")].add(s.context.span_id.to_bytes(8, "big"))
    return dict(spans), errors


def read_file_spans(path) -> list[tuple[bytes, bytes, dict, str]]:
    """(trace ID, span ID, attributes, tracestate) of every span the back Collector wrote (OTLP JSON lines)."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            if not line.endswith("\n"):  # the exporter is still writing this line
                break
            for rs in json.loads(line).get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        attrs = {a["key"]: next(iter(a["value"].values()), None) for a in sp.get("attributes", [])}
                        out.append(
                            (bytes.fromhex(sp["traceId"]), bytes.fromhex(sp["spanId"]), attrs, sp.get("traceState", ""))
                        )
    return out


def span_ids(value: bytes) -> list[bytes]:
    return [sp.span_id for rs in otlp.parse_request(value).resource_spans for ss in rs.scope_spans for sp in ss.spans]


@pytest.mark.parametrize("by_trace_id", [True, False], ids=["partition_traces_by_id", "unkeyed"])
def test_sdk_collector_tailsift_collector(otelcol_binary, kafka_bootstrap, unique_name, tmp_path, by_trace_id):
    path, cfg = run_config(
        kafka_bootstrap,
        f"ocol-{unique_name}",
        tmp_path,
        # keyed by the Collector: its placement is the canonical one (README "Partitioning")
        ingest={"format": "otlp_proto", "rekey": True, "partitioning": "collector" if by_trace_id else "tailsift"},
        emit={"format": "otlp_proto"},
        assemble={"decision_wait_ms": 3000, "root_quiet_gap_ms": 0},
        sli={"window_seconds": 2, "grace_seconds": 1},
        sampling={
            "policies": [
                {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
                {"name": "baseline", "type": "probabilistic", "sampling_percentage": BASELINE_PERCENT},
            ]
        },
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    grpc_port = free_port()
    env = {
        "KAFKA_BROKERS": kafka_bootstrap,
        "TAILSIFT_SPANS_RAW": cfg.topics.spans_raw.name,
        "TAILSIFT_TRACES_KEPT": cfg.topics.traces_kept.name,
        "PARTITION_TRACES_BY_ID": "true" if by_trace_id else "false",
        "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
    }
    front = otelcol.CollectorProcess(
        otelcol_binary,
        otelcol.CONFIG_DIR / "collector-front.yaml",
        tmp_path / "front.log",
        env=env,
        extra_configs=[NO_TELEMETRY],
    )
    out_file = tmp_path / "kept.json"
    back = otelcol.CollectorProcess(
        otelcol_binary,
        otelcol.CONFIG_DIR / "collector-back.yaml",
        tmp_path / "back.log",
        env=env,
        # the README's back Collector exports to a tracing backend; here to a file the test reads
        extra_configs=[
            NO_TELEMETRY,
            f"yaml:exporters::file::path: {out_file}",
            "yaml:service::pipelines::traces::exporters: [file]",
        ],
    )
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        front.start()
        wait_port(grpc_port, front)
        sent, errors = send_traces(f"127.0.0.1:{grpc_port}")
        assert len(sent) == N_TRACES and len(errors) == N_TRACES // 5
        n_spans = sum(len(s) for s in sent.values())
        metrics = job.wait_drained(n_spans, timeout=120)
        decided = sum(v for k, v in metrics.items() if k.startswith("tailsift_traces_decided_total"))
        assert decided == N_TRACES
        kept_spans_reported = metrics["tailsift_kept_spans_total"]
        rekeyed = sum(v for k, v in metrics.items() if k.startswith("tailsift_messages_total") and "rekeyed" in k)

        # the front leg, read back from spans.raw: keyed by the trace ID's hex, one trace per message,
        # or unkeyed multi-trace batches (and tailsift's re-keyed copies of them)
        raw = list(read_all(kafka_bootstrap, cfg.topics.spans_raw.name, timeout=30))
        from_collector = [(p, k, v) for p, _, k, v in raw if k is None or len(k) == 32]
        assert from_collector
        n_partitions = cfg.topics.spans_raw.partitions
        if by_trace_id:
            # the Collector keys by the 32-character hex ID and places it with Sarama's FNV-1a hash;
            # with ingest.partitioning: collector that is where tailsift expects it: no copy at all
            # (under the default partitioning ~(N-1)/N of these were re-keyed: tests/unit/test_partitioner.py)
            for partition, key, value in from_collector:
                (tid,) = otlp.decode_traces(value)
                assert key == tid.hex().encode()
                assert partition == sarama_partition(key, cfg.topics.spans_raw.partitions)
            assert rekeyed == 0
        else:
            assert all(k is None for _, k, _ in from_collector)

            def homes(value: bytes) -> set[int]:
                return {TAILSIFT.partition(t, n_partitions) for t in otlp.decode_traces(value)}

            # tailsift's copies of several traces are keyless too, but each sits on its traces'
            # partition; the Collector's batches do not (a single-trace one is re-keyed anyway,
            # unkeyed): those are the ones re-keyed (a batch whose traces all sit where it landed
            # stays, and cannot be told from a copy here — its spans are in no copy)
            moved = [(p, v) for p, k, v in from_collector if len(otlp.decode_traces(v)) == 1 or homes(v) != {p}]
            assert any(len(otlp.decode_traces(v)) > 1 for _, v in moved)
            assert rekeyed == len(moved)
            moved_spans = {sid for _, v in moved for sid in span_ids(v)}
            copies = [
                (p, k, v)
                for p, _, k, v in raw
                if (k is not None and len(k) == 16)
                or (k is None and homes(v) == {p} and set(span_ids(v)) <= moved_spans)
            ]
            # one copy per destination partition of each re-keyed batch (before: one per trace),
            # holding every span of the batches once
            assert (
                len(copies) == sum(len(homes(v)) for _, v in moved) < sum(len(otlp.decode_traces(v)) for _, v in moved)
            )
            assert sorted(sid for _, _, v in copies for sid in span_ids(v)) == sorted(
                sid for _, v in moved for sid in span_ids(v)
            )

        back.start()
        deadline = time.monotonic() + 60
        spans = read_file_spans(out_file)
        while len(spans) < kept_spans_reported and time.monotonic() < deadline:
            back.check_alive()
            time.sleep(0.5)
            spans = read_file_spans(out_file)
    finally:
        for c in (front, back):
            c.stop()
        job.stop()

    want = errors | {t for t in sent if int.from_bytes(t[-7:], "big") >= THRESHOLD}
    assert len(want) > len(errors), "the seed-free SDK ids should give some baseline keeps; rerun"
    got: dict[bytes, set[bytes]] = defaultdict(set)
    for tid, sid, attrs, tracestate in spans:
        got[tid].add(sid)
        if tid in errors:
            assert (attrs["sampling.policy"], float(attrs["sampling.adjusted_count"])) == ("errors", 1.0)
            assert "th:" not in tracestate  # kept for sure: no threshold to record
        else:
            assert (attrs["sampling.policy"], float(attrs["sampling.adjusted_count"])) == ("baseline", 4.0)
            assert "ot=th:c" in tracestate.split(","), tracestate  # 25 % → rejection threshold 0xc…
        assert attrs["sampling.reason"]
        assert CANARY not in json.dumps(attrs)
    assert set(got) == want  # exactly the error traces and the trace IDs the threshold admits
    for tid in want:
        assert got[tid] == sent[tid], "a kept trace arrived incomplete"
    assert len(spans) == kept_spans_reported == sum(len(sent[t]) for t in want)
    assert CANARY not in out_file.read_text()
