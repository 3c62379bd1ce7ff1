"""Unkeyed multi-trace OTLP input across 8 partitions (the Collector's default,
partition_traces_by_id: false): tailsift re-keys it one copy per destination partition and every
kept trace arrives whole."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipeline.codecs import otlp
from pipeline.demo import run_config
from pipeline.jobproc import JobProcess
from pipeline.kafka.partitioner import TAILSIFT
from pipeline.otel import KafkaSpanExporter
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration
N_TRACES = 60


class RecordingExporter(KafkaSpanExporter):
    """The exporter, noting where each of its messages was written: (partition, offset) → value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written: dict[tuple[int, int], bytes] = {}

    def _on_delivery(self, err, msg) -> None:
        super()._on_delivery(err, msg)
        if err is None:
            self.written[(msg.partition(), msg.offset())] = msg.value()


def expected_copies(written: dict[tuple[int, int], bytes], partitions: int) -> Counter:
    """What the job must write back to the input topic for these messages: per message off its
    traces' canonical partition one copy per destination partition — (partition, key, its traces)
    — keyed by its trace when it holds one, keyless when several; nothing for a message of
    several traces that all belong where it sits."""
    want: Counter = Counter()
    for (p, _), value in written.items():
        homes: dict[int, list[bytes]] = {}
        for t in otlp.decode_traces(value):
            homes.setdefault(TAILSIFT.partition(t, partitions), []).append(t)
        if len(homes) == 1 and next(iter(homes)) == p and len(next(iter(homes.values()))) > 1:
            continue  # in place
        for home, ts in homes.items():
            want[(home, ts[0] if len(ts) == 1 else None, frozenset(ts))] += 1
    return want


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
        providers, tracers, exporters = [], [], []
        for service in ("edge", "api", "db"):
            p = TracerProvider(resource=Resource.create({"service.name": service}))
            exporters.append(
                RecordingExporter(kafka_bootstrap, cfg.topics.spans_raw.name, partition_traces_by_id=False)
            )
            p.add_span_processor(BatchSpanProcessor(exporters[-1], schedule_delay_millis=300, max_export_batch_size=25))
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
        written = {at: value for e in exporters for at, value in e.written.items()}
        copies: Counter = Counter()
        for p, o, key, value in read_all(kafka_bootstrap, cfg.topics.spans_raw.name):
            if (p, o) not in written:  # the job's copy
                copies[(p, key, frozenset(otlp.decode_traces(value)))] += 1
    finally:
        job.stop()
    assert set(kept) == set(expected)
    for tid, records in kept.items():
        # whole: one record per trace (at-least-once may repeat it), holding every span
        assert all(ids == expected[tid] for ids in records), tid.hex()
    # one copy per destination partition (before: one per trace, ~3× as many here)
    want = expected_copies(written, 8)
    assert copies == want
    assert sum(want.values()) < sum(len(otlp.decode_traces(v)) for v in written.values())
    assert any(key is None for _, key, _ in want)  # copies of several traces: exercised
