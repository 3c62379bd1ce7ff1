"""Unkeyed multi-trace OTLP input across 8 partitions (the Collector's default,
partition_traces_by_id: false): tailsift re-keys per trace and every kept trace arrives whole."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipeline.codecs import otlp
from pipeline.demo import run_config
from pipeline.jobproc import JobProcess
from pipeline.otel import KafkaSpanExporter
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration
N_TRACES = 60


def test_unkeyed_multi_trace_requests_on_8_partitions_are_kept_whole(kafka_bootstrap, unique_name, tmp_path):
    path, cfg = run_config(
        kafka_bootstrap,
        f"unk-{unique_name}",
        tmp_path,
        ingest={"format": "otlp_proto", "rekey": True},
        emit={"format": "otlp_proto"},
        assemble={"decision_wait_ms": 4000, "root_quiet_gap_ms": 0},
        sli={"window_seconds": 2, "grace_seconds": 1},
        sampling={"policies": [{"name": "all", "type": "always_sample"}]},
    )
    # the topic gets 8 partitions on the broker (the job subscribes to whatever the broker has)
    # (and the decision log as many: decisions of input partition p live in its partition p)
    topics = cfg.topics.model_copy(
        update={
            "spans_raw": cfg.topics.spans_raw.model_copy(update={"partitions": 8}),
            "decisions": cfg.topics.decisions.model_copy(update={"partitions": 8}),
        }
    )
    cfg = cfg.model_copy(update={"topics": topics})
    assert all(r.status == "created" for r in create_topics(cfg))
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    expected: dict[bytes, set[bytes]] = defaultdict(set)
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        providers, tracers = [], []
        for service in ("edge", "api", "db"):
            p = TracerProvider(resource=Resource.create({"service.name": service}))
            p.add_span_processor(
                BatchSpanProcessor(
                    KafkaSpanExporter(kafka_bootstrap, cfg.topics.spans_raw.name, partition_traces_by_id=False),
                    schedule_delay_millis=300,
                    max_export_batch_size=25,
                )
            )
            providers.append(p)
            tracers.append(p.get_tracer("unkeyed"))
        for _ in range(N_TRACES):
            ctx = None
            for t in tracers:  # edge → api → db, each in its own service (and its own export batches)
                with t.start_as_current_span("op", context=ctx, kind=trace_api.SpanKind.SERVER) as span:
                    sc = span.get_span_context()
                    expected[sc.trace_id.to_bytes(16, "big")].add(sc.span_id.to_bytes(8, "big"))
                    ctx = trace_api.set_span_in_context(span)
        for p in providers:
            assert p.force_flush(30_000)
            p.shutdown()

        kept: dict[bytes, list[set[bytes]]] = defaultdict(list)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            kept.clear()
            for _, _, key, value in read_all(kafka_bootstrap, cfg.topics.traces_kept.name):
                ids = {
                    sp.span_id
                    for rs in otlp.parse_request(value).resource_spans
                    for ss in rs.scope_spans
                    for sp in ss.spans
                    if sp.trace_id == key
                }
                kept[key].append(ids)
            if len(kept) >= N_TRACES:
                break
            time.sleep(1)
    finally:
        job.stop()
    assert set(kept) == set(expected)
    for tid, records in kept.items():
        # whole: one record per trace (at-least-once may repeat it), holding every span
        assert all(ids == expected[tid] for ids in records), tid.hex()
