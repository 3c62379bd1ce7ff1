"""OpenTelemetry SDK integration: ``KafkaSpanExporter`` writes OTLP to Kafka as the Collector's
kafka exporter does (``from pipeline.otel import KafkaSpanExporter``)."""

from pipeline.otel.kafka_exporter import KafkaSpanExporter

__all__ = ["KafkaSpanExporter"]
