"""Create the topics a config names (idempotent), with partitions, retention and compaction."""

from __future__ import annotations

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
    return results
