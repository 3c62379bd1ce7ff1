"""The deployed stream job: a Faust worker around ``pipeline.job.Job``.

Faust gives the consumer group, partition assignment, agents, timers and graceful shutdown. The
job never lets Faust ack a message on its own (``noack_take``): a message is acked — and so its
offset becomes committable — only when ``Job.ready`` says everything derived from it was
acknowledged by the broker. Acks are handed to Faust strictly in offset order per partition.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from confluent_kafka.admin import AdminClient

from pipeline import metrics
from pipeline.config import Config
from pipeline.job import Job, Received

log = logging.getLogger("tailsift")


class TopicsMissing(Exception):
    pass


def check_topics(config: Config) -> None:
    """Fail fast, with the fix, when the topics the job needs do not exist."""
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
    try:
        existing = admin.list_topics(timeout=15).topics
    except Exception as exc:  # KafkaException on timeout
        raise TopicsMissing(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
    missing = [f"topics.{k} ({t.name})" for k, t in config.topics.all().items() if t.name not in existing]
    if missing:
        raise TopicsMissing(
            "missing topics: " + ", ".join(missing) + " — create them with `tailsift topics create -c CONFIG`"
        )


def build_app(config: Config, job: Job) -> faust.App:
    k, j = config.kafka, config.job
    app = faust.App(
        k.group_id,
        broker=[f"kafka://{server.strip()}" for server in k.bootstrap_servers.split(",")],
        datadir=j.data_dir,
        web_enabled=False,
        autodiscover=False,
        topic_replication_factor=config.topics.spans_raw.replication_factor,
        # Buffered spans are held on purpose: do not wait for "all events acked" on rebalance.
        stream_wait_empty=False,
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=k.heartbeat_interval_ms / 1000,
        broker_commit_interval=j.commit_interval_ms / 1000,
        broker_commit_every=10_000,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=5,
    )
    spans_topic = app.topic(
        config.topics.spans_raw.name, key_serializer="raw", value_serializer="raw", internal=False
    )
    lock = asyncio.Lock()
    streams: list = []

    async def flush(flush_all_windows: bool = False) -> None:
        """Decide due traces, close due windows, produce, wait for acks, ack inputs in order."""
        async with lock:
            started = time.perf_counter()
            outbox = job.collect(time.time_ns(), flush_all_windows)
            if outbox.records:
                producer = app.producer
                futures = [await producer.send(r.topic, r.key, r.value, None, None, None) for r in outbox.records]
                # A failed send raises here: the worker crashes before anything is acked, and the
                # inputs are consumed again after restart (at-least-once).
                await asyncio.gather(*futures)
                for r in outbox.records:
                    metrics.RECORDS_PRODUCED.labels(r.topic).inc()
                job.delivered(outbox.records)
                metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
            ready = job.ready()
            if ready and streams:
                stream = streams[0]
                for hold in ready:
                    await stream.ack(hold.ref)
            job.update_gauges()

    @app.agent(spans_topic, name="tailsift-ingest")
    async def ingest(stream):
        streams[:] = [stream]
        async for events in stream.noack_take(j.batch_max_messages, within=j.batch_within_ms / 1000):
            generation = app.consumer_generation_id
            messages = [
                Received(e.message.partition, e.message.offset, e.key, e.value, e)
                for e in events
                # Events fetched before a rebalance are stale: their partitions were re-read
                # from the committed offset, so they are neither processed nor acked.
                if e.message.generation_id == generation
            ]
            job.ingest(messages, time.time_ns())
            await flush()

    @app.timer(interval=j.tick_ms / 1000)
    async def tick() -> None:
        await flush()

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:  # noqa: ANN001 - Faust signal signature
        lost = {tp.partition for tp in revoked if tp.topic == job.input_topic}
        if lost:
            async with lock:
                job.revoke(lost)
            log.info("partitions revoked: %s (their uncommitted spans will be reread)", sorted(lost))

    return app


def run(config: Config, loglevel: str = "info") -> int:
    """Run the worker until SIGTERM/SIGINT. Returns the process exit code."""
    from faust.worker import Worker

    protector = None
    if config.privacy.enabled:
        from pipeline.privacy import build_protector, install_log_protection

        # Keys first: a missing key stops the worker before it connects or consumes anything
        # (PrivacyKeyError → `tailsift run` exits 2 naming the variable or file).
        protector = build_protector(config.privacy)
        install_log_protection(protector)
    else:
        log.warning("privacy.enabled is false: kept traces leave without PII protection (see README 'Privacy')")
    check_topics(config)
    job = Job(config, protector=protector)
    app = build_app(config, job)
    metrics.serve(config.metrics.port, config.metrics.host)
    log.info("tailsift worker %s: %s → %s, %s (metrics on :%s)", job.worker_id, job.input_topic,
             job.kept_topic, job.sli_topic, config.metrics.port or "off")
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns via SystemExit
    return 0
