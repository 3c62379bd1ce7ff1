"""One snapshot for ``pipeline.kafka.read_times``, as a ``Future``, without waiting on the caller's
thread: the consumer group's committed offsets (with their checkpoint metadata) of every input
partition, then the end offsets (the high watermark, see below) of the partitions the caller owns,
taken after the first answer.

Why not the AdminClient (what it used before, ``list_consumer_group_offsets`` and
``list_offsets`` futures) — both measured against a local broker killed and started again in a loop
(librdkafka 2.16.0, bundled with confluent-kafka 2.16.1, the newest on PyPI):

- ``list_consumer_group_offsets`` **aborts the process.** A group-coordinator admin request whose
  ``request_timeout`` runs out before its coordinator is reachable leaves its coordinator request
  behind (``rd_kafka_coord_req`` never times out); when the coordinator comes back, that request
  drops the last reference to the admin request's ``eonce`` (freed) and then hands the same
  pointer to its failure path, which reads it again: ``rd_kafka_enq_once_del_source_return:
  Assertion `eonce->refcnt > 0' failed``, SIGABRT. A broker restart longer than the request
  timeout does that: a worker died so in ``tests/integration/test_broker_restart.py``. Upstream:
  librdkafka issue #4605 (open), fix proposed in PR #5397 (not merged, in no release).
- ``list_offsets`` fails ``FENCED_LEADER_EPOCH`` after the restart, every time, for minutes: it
  sends the leader epoch of the admin client's metadata cache, which nothing refreshes (an admin
  client tracks no topic) — the snapshot would never complete again, and decisions would wait for
  the hard bound.

Instead two consumers that never join the group (no subscribe, no assign, never commit):
``committed()`` — librdkafka's consumer-group offset fetch, the path every consumer's restore takes
(no ``eonce``), read_uncommitted so it does not ask for stable offsets only (the broker would answer
nothing while any worker's transaction holds offsets: nearly always) — and
``get_watermark_offsets(cached=False)`` of a read_uncommitted one (a ListOffsets without a leader
epoch: the high watermark). Both lived through every restart of that loop.

Why the high watermark and not the last stable offset (what a read_committed reader's ListOffsets
answers): a transaction left open on an owned partition — a worker killed or stopped mid-commit,
open until it is fenced or times out — holds the LSO at its first record, below the copies other
workers commit after it. The worker's read_committed position stops at that LSO too, so "read to
the LSO" would count a snapshot whose copies were never read: traces decided without their re-keyed
spans (``make chaos``: error traces missed with their ERROR copy above an aborted transaction's
records). The high watermark is above every committed copy; the position passes it once the
transactions open at the snapshot have ended (each live worker's within its commit interval, a dead
one's when it is aborted) — the decisions wait that long, within the assembler's hard bound. They block (up to
the timeout, waiting out a broker that is away), so each snapshot runs on a short-lived daemon
thread; the caller asks again only once the last one is done: one at a time.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.config import Config
from pipeline.kafka import clients

# a snapshot still running when the exchange closes gets this long to end (see close())
CLOSE_WAIT_S = 2.0


class GroupSnapshots:
    """Snapshots of ``config.kafka.group_id``'s committed offsets and the owned end offsets."""

    def __init__(self, config: Config, topic: str, partitions: int, committed: Any = None, ends: Any = None):
        self.topic = topic
        self.partitions = partitions
        self.committed = committed if committed is not None else Consumer(clients.group_offsets_reader(config))
        self.ends = ends if ends is not None else Consumer(clients.end_offsets_reader(config))
        self._running: threading.Thread | None = None
        self._closed = False

    def fetch(self, owned: list[int], timeout_s: float) -> Future:
        """``(committed, ends)``: the committed offset and metadata of every input partition
        (offset < 0: none committed) and {owned partition: end offset}; or the ``KafkaException``
        of a broker away. One at a time: ask again once this one is done."""
        if self._running is not None and self._running.is_alive():
            raise RuntimeError("a group snapshot is still being taken")
        future: Future = Future()
        if self._closed:
            future.set_exception(RuntimeError("closed"))
            return future
        self._running = threading.Thread(
            target=self._take, args=(future, owned, timeout_s), name="group-snapshot", daemon=True
        )
        self._running.start()
        return future

    def _take(self, future: Future, owned: list[int], timeout_s: float) -> None:
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            committed = self.committed.committed(tps, timeout=timeout_s)
            ends = {}
            for p in owned:  # after the committed offsets: every copy their commits wrote lies below
                marks = self.ends.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout_s, cached=False)
                if marks is None:
                    raise KafkaException(f"end offset of {self.topic} [{p}]: no answer in {timeout_s} s")
                ends[p] = marks[1]
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            future.set_exception(exc)
        else:
            future.set_result((committed, ends))

    def close(self) -> None:
        """Close the consumers once no snapshot uses them: closing destroys librdkafka's handle,
        which a snapshot still inside a call would then use. One that does not end within
        ``CLOSE_WAIT_S`` (a broker away) keeps them; the process's end frees them."""
        self._closed = True
        running = self._running
        if running is not None:
            running.join(CLOSE_WAIT_S)
            if running.is_alive():
                return
        self.committed.close()
        self.ends.close()
