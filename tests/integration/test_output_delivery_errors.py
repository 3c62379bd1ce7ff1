"""The output producer's delivery reports (``pipeline.kafka.clients.producer``): librdkafka reports
only failed records (``delivery.report.only.error``); a record the broker refuses must still fail
the write that holds it — at_least_once's ``write`` and exactly_once's transaction."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.demo import run_config
from pipeline.job.records import Record
from pipeline.kafka import clients
from pipeline.kafka.producer import EmitError, OutputProducer


@pytest.fixture
def small_topic(kafka_bootstrap, unique_name) -> str:
    """A topic whose broker limit refuses records over 2,000 bytes (the producer's own is ~1 MB, so
    only the broker's answer can fail them)."""
    name = f"small-{unique_name}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "2000"})])[name].result(30)
    return name


def _config(kafka_bootstrap, unique_name, tmp_path):
    return run_config(kafka_bootstrap, f"dr-{unique_name}", tmp_path)[1]


def test_a_refused_record_fails_the_at_least_once_write(kafka_bootstrap, unique_name, tmp_path, small_topic):
    cfg = _config(kafka_bootstrap, unique_name, tmp_path)
    producer = OutputProducer(clients.producer(cfg, None))
    try:
        producer.write([Record(small_topic, b"k", b"x" * 100)])  # accepted: no report, no error
        with pytest.raises(EmitError, match="delivery failed"):
            producer.write([Record(small_topic, b"k", b"x" * 100), Record(small_topic, b"k", b"x" * 10_000)])
    finally:
        producer.close()


def test_a_refused_record_fails_the_exactly_once_transaction(kafka_bootstrap, unique_name, tmp_path, small_topic):
    cfg = _config(kafka_bootstrap, unique_name, tmp_path)
    producer = OutputProducer(clients.producer(cfg, f"dr-{unique_name}"))
    try:
        producer.produce([Record(small_topic, b"k", b"x" * 100)])
        producer.transaction([], [], None)  # committed
        producer.produce([Record(small_topic, b"k", b"x" * 10_000)])
        with pytest.raises(EmitError):
            producer.transaction([Record(small_topic, b"k", b"x" * 100)], [], None)
    finally:
        producer.close()
