"""Create the topics a config names (idempotent), with partitions, retention and compaction."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config import Config, TopicConfig
from pipeline.kafka import clients


@dataclass
class TopicResult:
    key: str
    name: str
    status: str  # created | exists | error
    detail: str = ""


def topic_settings(topic: TopicConfig) -> dict[str, str]:
    # compacted with a retention: the latest record per key, and old keys expire (decision log)
    policy = ("compact,delete" if topic.retention_ms is not None else "compact") if topic.compacted else "delete"
    settings = {"cleanup.policy": policy}
    if topic.retention_ms is not None:
        settings["retention.ms"] = str(topic.retention_ms)
    return settings


def create_topics(config: Config, timeout: float = 30.0) -> list[TopicResult]:
    admin = AdminClient(clients.base(config))
    wanted = config.topics.all()
    existing = admin.list_topics(timeout=timeout).topics
    results: list[TopicResult] = []
    new = []
    for key, topic in wanted.items():
        if topic.name in existing:
            have = len(existing[topic.name].partitions)
            detail = (
                ""
                if have == topic.partitions
                else f"has {have} partitions, config says {topic.partitions} (not changed)"
            )
            results.append(TopicResult(key, topic.name, "exists", detail))
        else:
            new.append((key, topic))
    if new:
        futures = admin.create_topics(
            [
                NewTopic(
                    t.name,
                    num_partitions=t.partitions,
                    replication_factor=t.replication_factor,
                    config=topic_settings(t),
                )
                for _, t in new
            ],
            request_timeout=timeout,
        )
        for key, topic in new:
            try:
                futures[topic.name].result(timeout)
                results.append(TopicResult(key, topic.name, "created", f"{topic.partitions} partitions"))
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    results.append(TopicResult(key, topic.name, "exists"))
                else:
                    results.append(TopicResult(key, topic.name, "error", str(err)))
        created = {r.name: wanted[r.key].partitions for r in results if r.status == "created"}
        _wait_visible(admin, created, timeout)
    return results


def _wait_visible(admin: AdminClient, topics: dict[str, int], timeout: float) -> None:
    """Until the broker's metadata shows every created topic with all its partitions led: the
    controller acknowledges a creation before the brokers' metadata caches catch up (KRaft), and
    a worker started in that gap would exit with "missing topics"."""
    deadline = time.monotonic() + timeout
    while topics and topics_not_ready(admin.list_topics(timeout=max(1.0, deadline - time.monotonic())), topics):
        if time.monotonic() > deadline:
            return  # what is still missing is reported by whoever needs it, naming the topic
        time.sleep(0.1)


def topics_not_ready(metadata, wanted: dict[str, int]) -> list[str]:
    """What the cluster metadata (``AdminClient.list_topics()``) still lacks of ``wanted`` (topic →
    partition count): a topic missing or in error, fewer partitions, a partition without a leader."""
    lacking = []
    for name, partitions in sorted(wanted.items()):
        t = metadata.topics.get(name)
        if t is None or t.error is not None:
            lacking.append(f"{name}: {'absent' if t is None else t.error}")
        elif len(t.partitions) < partitions:
            lacking.append(f"{name}: {len(t.partitions)} of {partitions} partitions")
        elif any(p.leader < 0 or p.error is not None for p in t.partitions.values()):
            lacking.append(f"{name}: a partition without a leader")
    return lacking
