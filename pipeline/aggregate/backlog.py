"""Whether the stage has read every committed partial of a ``sli.windows`` partition: an idle tick
may only advance a partition that has no partial left unread.

Ticks travel on their own topic, so Faust may hand one to the agent before older partials of the
same partition that are still unread (a stage that starts on a backlog, or a restart that re-reads
partials a tick of the killed stage was written after). Were the tick applied, the partition's
event time would jump past those partials and close their windows without them.

What the stage has read of partition p is known exactly below ``read_through[p]``: the offset after
the newest partial the agent handed to the stage, or the group's committed offset when that is
further (the tables were restored to it: exactly_once commits the offsets with the table changes).
When that reaches the partition's last stable offset (``read_committed``: what a reader can see now)
the partition is caught up; else a probe reads from there: a record means a partial is unread, the
end of the partition means the gap held only what a ``read_committed`` reader never sees
(transaction markers, aborted partials) — the probe's end offset is then known read. Blocking
librdkafka calls: the stage runs them in a thread (``Stage.on_tick``).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.config_kafka import KafkaConfig
from pipeline.kafka import clients

log = logging.getLogger("tailsift.aggregate")


class Backlog:
    def __init__(self, kafka: KafkaConfig | str, topic: str, group_id: str, timeout_s: float = 5.0):
        self.topic = topic
        self.timeout_s = timeout_s
        self.read_through: dict[int, int] = {}  # partition → every partial below it read
        self.group_id = group_id
        self.kafka = kafka
        self._settings = {
            # its own group, never joined (assign only) and never committed: the stage's group is only
            # asked for its committed offsets, by another consumer that never joins it (_committed)
            "group.id": f"{group_id}-backlog-probe",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,  # the probe waits for an answer, not for more data
        }
        self._offsets: Consumer | None = None
        self._consumer: Consumer | None = None

    def read(self, partition: int, offset: int) -> None:
        """The agent handed the stage the partial at ``offset`` (offsets of a partition arrive in order)."""
        if offset + 1 > self.read_through.get(partition, -1):
            self.read_through[partition] = offset + 1

    def reset(self) -> None:
        """After a rebalance Faust reads an assigned partition again from its committed offset."""
        self.read_through.clear()

    def caught_up(self, partition: int) -> bool:
        try:
            return self._caught_up(partition)
        except (KafkaException, TimeoutError) as exc:  # the broker slow or away: not known caught up, the tick waits
            log.debug("backlog check of %s[%d]: %s", self.topic, partition, exc)
            return False

    def _caught_up(self, partition: int) -> bool:
        consumer = self._probe()
        tp = TopicPartition(self.topic, partition)
        low, end = consumer.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)
        start = self.read_through.get(partition, low)
        if start >= end:
            return True
        # asked each time it is needed, not kept: the stage commits further while a partition is quiet
        start = max(start, self._committed(partition))
        if start >= end:
            return True
        return self._nothing_readable_from(partition, start)

    def _nothing_readable_from(self, partition: int, start: int) -> bool:
        consumer = self._probe()
        consumer.assign([TopicPartition(self.topic, partition, start)])
        try:
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                if msg.error() is None:
                    return False  # a committed partial the stage has not read yet
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    self.read_through[partition] = max(start, msg.offset())
                    return True
                log.debug("backlog probe of %s[%d]: %s", self.topic, partition, msg.error())
            return False  # no answer: not known to be caught up, the tick waits for the next one
        finally:
            consumer.unassign()

    def _committed(self, partition: int) -> int:
        """The stage group's committed offset, asked by a consumer of that group that never joins it
        (no subscribe, no assign): ``Consumer.committed``, not the AdminClient's
        ``list_consumer_group_offsets``, which aborts the process after a broker restart
        (``pipeline.kafka.group_snapshot`` has the librdkafka details). read_uncommitted: what is
        committed, not stable offsets only (the broker answers none while a transaction holds some)."""
        if self._offsets is None:
            self._offsets = Consumer(clients.group_offsets_reader(self.kafka, self.group_id))
        answer = self._offsets.committed([TopicPartition(self.topic, partition)], timeout=self.timeout_s)
        return max((tp.offset for tp in answer if tp.partition == partition), default=-1)

    def _probe(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer({**clients.connection(self.kafka), **self._settings})
        return self._consumer

    def close(self) -> None:
        for consumer in (self._consumer, self._offsets):
            if consumer is not None:
                consumer.close()
        self._consumer = self._offsets = None
