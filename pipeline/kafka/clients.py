"""Client settings derived from the config, in one place, so every consumer, producer and admin
client the project creates talks to the same cluster the same way — with the same security settings.

Every ``Consumer``/``Producer``/``AdminClient`` in ``pipeline/`` takes its settings from
``connection()`` (or a function here built on it); ``tests/unit/test_kafka_security.py`` fails when
one does not."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Config
from pipeline.config_kafka import KafkaConfig
from pipeline.kafka import security

log = logging.getLogger("tailsift")

# librdkafka's producer default; the job never builds a record larger than this (minus headroom for
# the record batch framing): see ``max_record_bytes``
PRODUCER_MAX_MESSAGE_BYTES = 1_000_000
MAX_PREFETCH_BYTES = 64 * 1024 * 1024
MIN_PREFETCH_BYTES = 2 * 1024 * 1024
MAX_FETCH_BYTES = 52_428_800  # librdkafka's default


# The ``kafka:`` section whose security settings apply to clients built from a bare address (tools
# that take ``--bootstrap``: generator, bench, readback, chaos); the CLI sets it from the config it
# loaded. None = PLAINTEXT.
_tool_kafka: KafkaConfig | None = None


def use_security(kafka: KafkaConfig | None) -> None:
    """Clients built from a bare bootstrap address use ``kafka``'s security settings from now on."""
    global _tool_kafka
    _tool_kafka = kafka


@contextmanager
def using_security(kafka: KafkaConfig | None) -> Iterator[None]:
    before = _tool_kafka
    use_security(kafka)
    try:
        yield
    finally:
        use_security(before)


def connection(target: str | KafkaConfig | Config) -> dict[str, Any]:
    """``bootstrap.servers`` and the security settings: of the config given, or for a bare address,
    of the config the command loaded (``use_security``)."""
    if isinstance(target, Config):
        target = target.kafka
    if isinstance(target, KafkaConfig):
        return {"bootstrap.servers": target.bootstrap_servers, **security.librdkafka(target)}
    return {"bootstrap.servers": target, **(security.librdkafka(_tool_kafka) if _tool_kafka else {})}


def base(config: Config) -> dict[str, Any]:
    return connection(config.kafka)


def prefetch_bytes(config: Config) -> int:
    """What librdkafka may hold of the input beyond what the job consumed: its prefetch queue
    (``queued.max.messages.kbytes``) and one fetch (``fetch.max.bytes``, 50 MiB at most) each get this much. Input
    held there is memory beside the assembler's buffer, which a backpressure pause does not empty:
    so no more than ``assemble.max_buffered_bytes`` (64 MiB at most, the old fixed size; 2 MiB at
    least, above the largest message a fetch must return whole)."""
    return min(MAX_PREFETCH_BYTES, max(MIN_PREFETCH_BYTES, config.assemble.max_buffered_bytes))


def input_consumer(config: Config) -> dict[str, Any]:
    """The job's member of the consumer group over ``topics.spans_raw``."""
    k, j = config.kafka, config.job
    prefetch = prefetch_bytes(config) // 1024 * 1024
    return {
        **base(config),
        "group.id": k.group_id,
        # offsets move only inside transactions (exactly_once) or by explicit commits after the
        # outputs are acknowledged (at_least_once): never by the client on its own
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # re-keyed copies and outputs of an aborted transaction must never be read
        "isolation.level": "read_committed",
        # incremental rebalances: a worker joining or leaving moves only the partitions that change
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": k.session_timeout_ms,
        "heartbeat.interval.ms": k.heartbeat_interval_ms,
        # a whole commit interval of work (and a restore) happens between two consume() calls
        "max.poll.interval.ms": max(300_000, 10 * j.commit_interval_ms),
        # fetch in large batches: consume(N) hands them over at ~1 µs per message
        "fetch.max.bytes": min(MAX_FETCH_BYTES, prefetch),
        "queued.max.messages.kbytes": prefetch // 1024,
    }


def producer(config: Config, transactional_id: str | None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **base(config),
        "enable.idempotence": True,  # no duplicates from the producer's own retries
        "acks": "all",
        "linger.ms": config.kafka.linger_ms,
        # a delivery report for a failed record only: the producer's callback does nothing with a
        # success, and librdkafka queues an event per record and the client calls back into Python
        # for each — a quarter to a third of the CPU of writing a record (the re-keyed copies of
        # make bench-peer's unkeyed input, 4.2 KB each: 12.5–18.5 → 9.0–12.4 µs; README
        # Performance). A failed record is still reported and still fails the write or transaction
        # (tests/integration/test_output_delivery_errors.py)
        "delivery.report.only.error": True,
        "message.max.bytes": PRODUCER_MAX_MESSAGE_BYTES,
        # the Java client's partitioner for keyed records (see pipeline.kafka.partitioner): a record
        # re-keyed by trace ID lands where every other producer following the README puts that trace
        "partitioner": "murmur2_random",
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = config.job.transaction_timeout_ms
    return conf


def group_offsets_reader(config: Config | KafkaConfig | str, group_id: str | None = None) -> dict[str, Any]:
    """A reader of a group's committed offsets — the job's (``pipeline.kafka.group_snapshot``), or
    ``group_id``'s (the aggregation stage's backlog check): of the group, but never a member (no
    subscribe, no assign, never commits)."""
    if group_id is None:  # the config's own group (a bare address names none: group_id required)
        group_id = (config.kafka if isinstance(config, Config) else config).group_id  # type: ignore[union-attr]
    return {
        **connection(config),
        "group.id": group_id,
        "enable.auto.commit": False,
        # librdkafka asks OffsetFetch for stable offsets when read_committed: the broker would then
        # answer nothing while any worker's transaction holds offsets — nearly always. What is
        # committed is what the read times need (a pending transaction's offsets are not)
        "isolation.level": "read_uncommitted",
    }


def end_offsets_reader(config: Config) -> dict[str, Any]:
    """A reader of the input's end offsets (``pipeline.kafka.group_snapshot``): its watermark
    queries answer the high watermark — read_uncommitted, so not the last stable offset, which an
    open transaction (a killed or zombie worker's, until it is aborted) holds below copies other
    workers have committed since. Never a member of its group; never reads a record."""
    return {
        **base(config),
        "group.id": config.kafka.group_id,
        "enable.auto.commit": False,
        "isolation.level": "read_uncommitted",
    }


RESTORE_FETCH_WAIT_MS = 10


def restore_consumer(config: Config) -> dict[str, Any]:
    """A group-less reader (assign() only, never commits) for the decision log."""
    import uuid

    return {
        **base(config),
        "group.id": f"tailsift-restore-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",  # aborted transactions of a dead worker never count
        "enable.partition.eof": True,
        # it reads to an end it knows: a fetch at that end should answer at once, not after the
        # default 500 ms the broker may hold it waiting for more (a restore pauses the worker)
        "fetch.wait.max.ms": RESTORE_FETCH_WAIT_MS,
    }


def max_record_bytes(config: Config, timeout: float = 15.0, patience_s: float = 120.0) -> int:
    """The largest record value the job may build: the smallest ``max.message.bytes`` of its output
    topics (read from the broker) and the producer's limit, less headroom for the record batch
    framing and key (a record batch of one record is what the broker checks). Asked again while
    the broker does not answer in time (a worker started during a broker restart: it exited 1 with
    a traceback), for ``patience_s``; other errors (e.g. no DescribeConfigs permission) raise."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(base(config))
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return _max_record_bytes(admin, config, timeout)
        except (TimeoutError, KafkaException) as exc:
            transient = isinstance(exc, TimeoutError) or exc.args[0].code() in _TRANSIENT
            if not transient or time.monotonic() > deadline:
                raise
            log.warning("reading the output topics' max.message.bytes: %s; asking again", exc or "timed out")


# errors of a broker that is away or still loading: they end when it is back
_TRANSIENT = (KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE)


def _max_record_bytes(admin, config: Config, timeout: float) -> int:  # noqa: ANN001 - an AdminClient
    from confluent_kafka.admin import ConfigResource

    t = config.topics
    names = {t.traces_kept.name, t.pii_audit.name, t.decisions.name, t.spans_raw.name}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in sorted(names)]
    limit = PRODUCER_MAX_MESSAGE_BYTES
    for future in admin.describe_configs(resources, request_timeout=timeout).values():
        entry = future.result(timeout).get("max.message.bytes")
        if entry is not None and entry.value:
            limit = min(limit, int(entry.value))
    return limit - 4_096
