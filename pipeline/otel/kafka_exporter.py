"""An OpenTelemetry Python SDK ``SpanExporter`` that writes OTLP to a Kafka topic.

Byte-compatible with the OTel Collector's kafka exporter: the value is a serialized
``ExportTraceServiceRequest`` (``otlp_proto``, built by the SDK's own OTLP encoder,
``opentelemetry-exporter-otlp-proto-common``) or its OTLP/JSON form (``otlp_json``). With
``partition_traces_by_id=True`` (default) each message holds one trace and is keyed by its 16
trace-ID bytes, so tailsift needs no re-keying; with False one message carries the whole export
batch, unkeyed (tailsift then re-keys it, one copy per destination partition, ``ingest.rekey``).

    provider.add_span_processor(BatchSpanProcessor(KafkaSpanExporter("127.0.0.1:9092", "spans.raw")))
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pipeline.codecs import otlp
from pipeline.kafka import clients


class KafkaSpanExporter(SpanExporter):
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "otlp_spans",
        *,
        encoding: str = "otlp_proto",
        partition_traces_by_id: bool = True,
        producer_config: dict[str, Any] | None = None,
        flush_timeout_s: float = 10.0,
        producer: Any = None,
    ):
        if encoding not in otlp.FORMATS:
            raise ValueError(f"encoding must be one of {otlp.FORMATS}, not {encoding!r}")
        self.topic = topic
        self.encoding = encoding
        self.partition_traces_by_id = partition_traces_by_id
        self.flush_timeout_s = flush_timeout_s
        self._errors = 0
        self._producer = producer or Producer(
            {
                **clients.connection(bootstrap_servers),
                "linger.ms": 5,
                "compression.type": "lz4",
                "enable.idempotence": True,
                # the system's one partitioner (pipeline.kafka.partitioner): murmur2 on the 16 key
                # bytes, as the Java client; librdkafka's default (CRC32) would put traces on other
                # partitions than the job's re-keyed copies and split them across workers
                "partitioner": "murmur2_random",
                **(producer_config or {}),
            }
        )

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._errors += 1

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        if self.partition_traces_by_id:
            by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
            for span in spans:
                by_trace[span.context.trace_id].append(span)
            messages = [(tid.to_bytes(16, "big"), group) for tid, group in by_trace.items()]
        else:
            messages = [(None, list(spans))]
        try:
            for key, group in messages:
                value = otlp.serialize_request(encode_spans(group), self.encoding)
                self._produce(key, value)
            self._producer.poll(0)
        except Exception:  # noqa: BLE001 - an exporter must not raise into the SDK
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _produce(self, key, value) -> None:
        try:
            self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
        except BufferError:
            self._producer.poll(0.5)
            self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._producer.flush(timeout_millis / 1000) == 0 and self._errors == 0

    def shutdown(self) -> None:
        self._producer.flush(self.flush_timeout_s)
