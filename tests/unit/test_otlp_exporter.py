"""KafkaSpanExporter without a broker: what it would produce."""

from opentelemetry.sdk.trace.export import SpanExportResult

from pipeline.codecs import otlp
from pipeline.otel import KafkaSpanExporter
from tests.unit.test_otlp_codec import sdk_spans


class FakeProducer:
    def __init__(self):
        self.sent = []

    def produce(self, topic, value, key, on_delivery):
        self.sent.append((topic, key, value))

    def poll(self, _t):
        return 0

    def flush(self, _t):
        return 0


def test_keyed_by_trace_id_one_trace_per_message():
    fake = FakeProducer()
    exporter = KafkaSpanExporter("unused", "spans.raw", producer=fake)
    assert exporter.export(sdk_spans(3)) is SpanExportResult.SUCCESS and exporter.force_flush()
    assert len(fake.sent) == 3
    for topic, key, value in fake.sent:
        (tid,) = otlp.decode_traces(value).keys()
        assert topic == "spans.raw" and key == tid


def test_unkeyed_json_one_message_per_batch():
    fake = FakeProducer()
    KafkaSpanExporter("unused", encoding="otlp_json", partition_traces_by_id=False, producer=fake).export(sdk_spans(2))
    ((topic, key, value),) = fake.sent
    assert topic == "otlp_spans" and key is None and len(otlp.decode_traces(value, "otlp_json")) == 2
