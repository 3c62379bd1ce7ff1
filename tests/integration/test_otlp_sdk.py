"""Real OTel SDK clients → Kafka (OTLP proto via pipeline.otel.KafkaSpanExporter) → tailsift run →
OTLP on traces.kept, on the real broker.

A small instrumented three-service program: ``frontend`` calls ``payments`` with W3C
``traceparent`` propagated in (HTTP-style) headers; ``payments`` publishes an order to a Kafka
topic with the context in the message headers; ``fulfilment`` consumes it and continues the trace
(an async hop through Kafka). Every fifth trace fails in fulfilment. Policy: keep errors only."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry import trace as trace_api
from opentelemetry.propagate import extract, inject
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
N_TRACES = 20


def tracer(bootstrap, topic, service):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(KafkaSpanExporter(bootstrap, topic), schedule_delay_millis=200))
    return provider, provider.get_tracer(f"shop.{service}", "1.0")


def test_sdk_program_through_kafka_and_tailsift(kafka_bootstrap, unique_name, tmp_path):
    run = f"otel-{unique_name}"
    path, cfg = run_config(
        kafka_bootstrap,
        run,
        tmp_path,
        ingest={"format": "otlp_proto"},
        emit={"format": "otlp_proto"},
        assemble={"decision_wait_ms": 3000, "root_quiet_gap_ms": 0},
        sli={"window_seconds": 2, "grace_seconds": 1},
        sampling={"policies": [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}]},
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    orders = f"{run}.orders"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(orders, 1, 1)])[orders].result(30)
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        spans_topic = cfg.topics.spans_raw.name
        providers, tracers = zip(
            *(tracer(kafka_bootstrap, spans_topic, s) for s in ("frontend", "payments", "fulfilment"))
        )
        front, pay, fulfil = tracers
        producer = Producer({"bootstrap.servers": kafka_bootstrap})

        def payments_handler(headers: dict, i: int) -> None:  # the "HTTP server" side
            with pay.start_as_current_span("POST /charge", context=extract(headers), kind=trace_api.SpanKind.SERVER):
                with pay.start_as_current_span(f"{orders} publish", kind=trace_api.SpanKind.PRODUCER):
                    carrier: dict[str, str] = {}
                    inject(carrier)
                    producer.produce(orders, value=str(i).encode(), headers=list(carrier.items()))

        trace_ids = []
        for i in range(N_TRACES):
            with front.start_as_current_span("GET /checkout", kind=trace_api.SpanKind.SERVER) as root:
                trace_ids.append(root.get_span_context().trace_id.to_bytes(16, "big"))
                with front.start_as_current_span("POST payments", kind=trace_api.SpanKind.CLIENT):
                    headers: dict[str, str] = {}
                    inject(headers)
                    assert "traceparent" in headers
                    payments_handler(headers, i)
        producer.flush(30)

        consumer = Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": f"{run}-fulfilment", "auto.offset.reset": "earliest"}
        )
        consumer.subscribe([orders])
        handled, deadline = 0, time.monotonic() + 60
        while handled < N_TRACES and time.monotonic() < deadline:
            for m in consumer.consume(50, timeout=1.0):
                if m.error():
                    continue
                ctx = extract({k: v.decode() for k, v in (m.headers() or [])})
                with fulfil.start_as_current_span(
                    f"{orders} process", context=ctx, kind=trace_api.SpanKind.CONSUMER
                ) as s:
                    if int(m.value()) % 5 == 0:
                        s.set_status(trace_api.Status(trace_api.StatusCode.ERROR, "out of stock"))
                handled += 1
        consumer.close()
        assert handled == N_TRACES
        for p in providers:
            assert p.force_flush(30_000)

        errors = {trace_ids[i] for i in range(N_TRACES) if i % 5 == 0}
        kept: dict[bytes, dict[bytes, tuple]] = defaultdict(dict)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            kept.clear()
            for _, _, key, value in read_all(kafka_bootstrap, cfg.topics.traces_kept.name):
                req = otlp.parse_request(value)
                for rs in req.resource_spans:
                    service = otlp.attrs_to_py(rs.resource.attributes)["service.name"]
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            assert sp.trace_id == key
                            kept[key][sp.span_id] = (service, sp.name, sp.kind, sp.parent_span_id, sp.status.code)
            if set(kept) >= errors and all(len(kept[t]) == 5 for t in errors):
                break
            time.sleep(1)
    finally:
        job.stop()
    assert set(kept) == errors
    for tid in errors:
        spans = kept[tid]
        assert len(spans) == 5
        by_name = {v[1]: (sid, v) for sid, v in spans.items()}
        assert {v[0] for v in spans.values()} == {"frontend", "payments", "fulfilment"}
        # parent chain across the HTTP hop and the Kafka hop
        chain = ["GET /checkout", "POST payments", "POST /charge", f"{orders} publish", f"{orders} process"]
        for parent, child in zip(chain, chain[1:]):
            assert by_name[child][1][3] == by_name[parent][0]
        assert by_name[chain[0]][1][3] == b""
        assert by_name[chain[-1]][1][4] == 2  # STATUS_CODE_ERROR
