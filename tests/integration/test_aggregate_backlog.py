"""The aggregation stage's backlog check asks the real broker for the stage group's committed
offset (``pipeline.aggregate.backlog``). It asked the AdminClient's ``list_consumer_group_offsets``,
whose coordinator requests abort the process after a broker restart (librdkafka issue #4605; the
worker died so in ``test_broker_restart.py``, see ``pipeline.kafka.group_snapshot``); now a
consumer of that group that never joins it."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.aggregate.backlog import Backlog
from pipeline.kafka import clients
from tests.integration.test_assembly_e2e import make_env

pytestmark = pytest.mark.integration


def committed(backlog: Backlog, partition: int, timeout: float = 120.0) -> int:
    """``_committed`` once the group's coordinator answers: a new group's coordinator may first say
    NOT_COORDINATOR while it loads (the stage's ``caught_up`` then says "not known", and asks again
    at the next tick)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return backlog._committed(partition)
        except KafkaException as exc:
            if not exc.args[0].retriable() and "coordinator" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_the_backlog_check_reads_the_stage_groups_committed_offset(local_kafka, unique_name, tmp_path):
    _, cfg = make_env(local_kafka.bootstrap, f"abl-{unique_name}", tmp_path)
    topic, group = cfg.topics.spans_raw.name, f"stage-{unique_name}"
    backlog = Backlog(cfg.kafka, topic, group, timeout_s=30.0)
    try:
        assert committed(backlog, 0) < 0  # nothing committed yet
        member = Consumer({**clients.base(cfg), "group.id": group, "enable.auto.commit": False})
        try:
            member.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 3)], asynchronous=False)
        finally:
            member.close()
        assert (committed(backlog, 0), committed(backlog, 1)) == (7, 3)
    finally:
        backlog.close()
