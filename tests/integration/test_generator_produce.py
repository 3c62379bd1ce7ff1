"""produce() against a real broker: every batch arrives, keyed by its trace, one partition per
trace."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.codecs import avro
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import TopicMissing, produce

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    futures[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until every partition has a leader
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"topic {topic} not ready")


def test_produce_200_traces_round_trip(kafka_bootstrap, unique_name):
    topic = f"gen-test-{unique_name}"
    _create_topic(kafka_bootstrap, topic, 3)

    expected: dict[bytes, list[bytes]] = {}

    def on_trace(tr):
        expected[tr.trace_id] = list(tr.encoded)

    stats = produce(
        kafka_bootstrap, topic, count=200, config=GeneratorConfig(seed=7), progress=False, on_trace=on_trace
    )
    assert stats.traces == 200 == len(expected)
    assert stats.messages == sum(len(v) for v in expected.values())

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{unique_name}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < stats.messages and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if msg.error():
                    raise KafkaException(msg.error())
                got.append((msg.partition(), msg.key(), msg.value()))
        # nothing more than what was produced
        extra = consumer.consume(num_messages=10, timeout=1.0)
    finally:
        consumer.close()
    assert len(got) == stats.messages and not extra

    partitions_of: dict[bytes, set[int]] = defaultdict(set)
    received: dict[bytes, list[bytes]] = defaultdict(list)
    for partition, key, value in got:
        assert len(key) == 16
        batch = avro.decode_batch(value)
        assert batch["trace_id"] == key
        partitions_of[key].add(partition)
        received[key].append(value)
    assert all(len(p) == 1 for p in partitions_of.values()), "a trace spans partitions"
    assert len({p for ps in partitions_of.values() for p in ps}) == 3, "keys spread out"
    # same partition -> the batches of a trace arrive in produce order
    assert dict(received) == expected


def test_produce_fails_fast_on_missing_topic(kafka_bootstrap, unique_name):
    with pytest.raises(TopicMissing):
        produce(
            kafka_bootstrap,
            f"no-such-topic-{unique_name}",
            count=1,
            progress=False,
            producer_config={"allow.auto.create.topics": False},
        )
