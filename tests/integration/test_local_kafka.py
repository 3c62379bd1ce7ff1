"""The local broker from deploy/local/kafka (or KAFKA_BOOTSTRAP_SERVERS) is a usable Kafka:
topics, exact produce/consume, transactions, fast consumer-group joins, and the CLI around it."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=30, request_timeout=30
    )
    futures[name].result(timeout=60)
    # Wait until the new topic's leaders are known, so producers do not race its creation.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topic = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if (
            topic
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} has no leaders after 30 s")


def consume_exactly(consumer: Consumer, expected: int, timeout: float = 60.0, settle: float = 2.0) -> list:
    """Reads until `expected` messages arrived, then `settle` seconds more to catch extras."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=500, timeout=1.0):
            if msg.error():
                raise KafkaException(msg.error())
            got.append(msg)
    settle_end = time.monotonic() + settle
    while time.monotonic() < settle_end:
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            if msg.error():
                raise KafkaException(msg.error())
            got.append(msg)
    return got


def new_consumer(bootstrap: str, group: str, **extra) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(extra)
    return Consumer(conf)


def test_produce_and_consume_exactly_100(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"it-roundtrip-{unique_name}"
    create_topic(kafka_bootstrap, topic, partitions=3)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    errors = []
    for i in range(100):
        producer.produce(topic, key=f"k{i % 7}", value=f"v{i}", on_delivery=lambda err, msg: err and errors.append(err))
    assert producer.flush(30) == 0
    assert errors == []

    consumer = new_consumer(kafka_bootstrap, f"it-roundtrip-{unique_name}")
    consumer.subscribe([topic])
    try:
        got = consume_exactly(consumer, 100)
    finally:
        consumer.close()
    values = [m.value().decode() for m in got]
    assert len(values) == 100
    assert sorted(values) == sorted(f"v{i}" for i in range(100))
    # Per key, order is kept (one key -> one partition).
    for key in {m.key() for m in got}:
        seq = [int(m.value().decode()[1:]) for m in got if m.key() == key]
        assert seq == sorted(seq)


def test_transactions_commit_and_abort(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"it-txn-{unique_name}"
    create_topic(kafka_bootstrap, topic, partitions=2)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"it-txn-{unique_name}"})
    producer.init_transactions(60)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=str(i), value=f"aborted-{i}")
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(20):
        producer.produce(topic, key=str(i), value=f"committed-{i}")
    producer.commit_transaction(30)

    consumer = new_consumer(kafka_bootstrap, f"it-txn-{unique_name}", **{"isolation.level": "read_committed"})
    consumer.subscribe([topic])
    try:
        got = consume_exactly(consumer, 20)
    finally:
        consumer.close()
    assert sorted(m.value().decode() for m in got) == sorted(f"committed-{i}" for i in range(20))


def test_consumer_group_joins_quickly_with_short_session_timeout(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"it-group-{unique_name}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    # session.timeout.ms=1500 is only accepted because of group.min.session.timeout.ms=1000, and
    # the join is quick because of group.initial.rebalance.delay.ms=0.
    consumer = new_consumer(
        kafka_bootstrap, f"it-group-{unique_name}", **{"session.timeout.ms": 1500, "heartbeat.interval.ms": 300}
    )
    assigned: list[float] = []
    started = time.monotonic()
    consumer.subscribe([topic], on_assign=lambda c, parts: assigned.append(time.monotonic()))
    try:
        while not assigned and time.monotonic() - started < 30:
            for msg in consumer.consume(num_messages=10, timeout=0.2):
                if msg.error():
                    raise KafkaException(msg.error())
    finally:
        consumer.close()
    assert assigned, "consumer was never assigned partitions"
    assert assigned[0] - started < 15, f"join took {assigned[0] - started:.1f}s"


def test_status_reports_running(local_kafka) -> None:
    proc = local_kafka.cli("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("running")
    assert local_kafka.bootstrap in proc.stdout

    proc = local_kafka.cli("bootstrap")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == local_kafka.bootstrap


def test_start_is_idempotent(local_kafka) -> None:
    started = time.monotonic()
    proc = local_kafka.cli("start", "--port", "0")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == local_kafka.bootstrap
    assert elapsed < 10, f"second start took {elapsed:.1f}s"
