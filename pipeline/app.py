"""The deployed stream job: a Faust worker around ``pipeline.job.Job``.

Faust gives the consumer group, partition assignment, agents, timers and graceful shutdown. The
job never lets Faust ack a message on its own (``noack_take``): a message is acked — and so its
offset becomes committable — only when ``Job.ready`` says everything derived from it was
acknowledged by the broker. Acks are handed to Faust strictly in offset order per partition.
Outputs go through ``pipeline.emitter`` (confluent-kafka; transactions in exactly_once mode);
on assignment the partitions' recent decisions are restored from the decision log before any of
their spans is processed; at the memory bound the agent stops taking input (backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faust
from confluent_kafka.admin import AdminClient

from pipeline import decision_log, metrics
from pipeline.config import Config
from pipeline.emitter import Emitter
from pipeline.job import Job, Received

log = logging.getLogger("tailsift")


class TopicsMissing(Exception):
    pass


def check_topics(config: Config) -> None:
    """Fail fast, with the fix, when the topics the job needs do not exist."""
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
    try:
        existing = admin.list_topics(timeout=15).topics
    except Exception as exc:  # noqa: BLE001 - KafkaException on timeout, or a bad bootstrap string
        raise TopicsMissing(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
    missing = [f"topics.{k} ({t.name})" for k, t in config.topics.all().items() if t.name not in existing]
    if missing:
        raise TopicsMissing(
            "missing topics: " + ", ".join(missing) + " — create them with `tailsift topics create -c CONFIG`"
        )
    spans, decisions = config.topics.spans_raw.name, config.topics.decisions.name
    have_in, have_dec = len(existing[spans].partitions), len(existing[decisions].partitions)
    if have_dec < have_in:
        # decisions of input partition p are written to decision-log partition p
        raise TopicsMissing(
            f"topics.decisions ({decisions}) has {have_dec} partitions but topics.spans_raw ({spans}) has "
            f"{have_in}: add partitions to the decision log (kafka-topics --alter --partitions {have_in})"
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
    )
    spans_topic = app.topic(config.topics.spans_raw.name, key_serializer="raw", value_serializer="raw", internal=False)
    # exactly_once: one transaction per commit interval holds the kept traces, their decisions, SLI
    # partials, dead letters and each partition's checkpoint; the input offsets follow (see README)
    emitter = Emitter(
        k.bootstrap_servers,
        f"tailsift.{k.group_id}.{job.worker_id}" if job.exactly_once else None,
        j.transaction_timeout_ms,
    )
    writer = ThreadPoolExecutor(1, thread_name_prefix="tailsift-emit")  # librdkafka blocks; keep the loop free
    lock = asyncio.Lock()
    streams: list = []
    restored = asyncio.Event()  # set once the assigned partitions' decisions are restored
    interval = j.commit_interval_ms / 1000
    state = {"last_write": 0.0, "paused_since": 0.0}
    flowing = asyncio.Event()  # cleared at the memory bound: the agent stops taking input
    flowing.set()

    def backpressure() -> None:
        """At the memory bound the agent stops taking events; Faust's stream buffer fills and its own
        flow control stops fetching, so Kafka holds the data. Resume under 80 % of the bound.

        Not ``Consumer.pause_partitions``: Faust filters records it already fetched by the active
        partition set, so records of a partition paused mid-``getmany`` are silently skipped (and
        later committed past) — found by the burst test in tests/integration/test_assembly_e2e.py."""
        if not flowing.is_set():
            if job.below_resume_mark():
                metrics.BACKPRESSURE_SECONDS.inc(time.monotonic() - state["paused_since"])
                metrics.PAUSED.set(0)
                flowing.set()
        elif config.assemble.overflow == "backpressure" and job.over_bound():
            flowing.clear()
            state["paused_since"] = time.monotonic()
            metrics.PAUSED.set(1)
            log.info(
                "backpressure: %d spans / %d bytes buffered, input paused",
                job.assembler.buffered_spans,
                job.assembler.buffered_bytes,
            )

    async def flush(flush_all_windows: bool = False) -> None:
        """Decide due traces, close due windows, write the outputs, ack inputs in offset order."""
        async with lock:
            if job.exactly_once and not flush_all_windows and time.monotonic() - state["last_write"] < interval:
                job.update_gauges()  # what was just ingested shows as buffered/uncommitted at once
                backpressure()
                return  # transactions are per commit interval, not per batch
            state["last_write"] = time.monotonic()
            started = time.perf_counter()
            outbox = job.collect(time.time_ns(), flush_all_windows)
            if outbox.records:
                # A failed write raises here: the worker stops before anything is acked, and the
                # inputs are read again after restart.
                await asyncio.get_running_loop().run_in_executor(writer, emitter.write, outbox.records)
                for r in outbox.records:
                    metrics.RECORDS_PRODUCED.labels(r.topic).inc()
                job.delivered(outbox.records)
                done_ns = time.time_ns()
                for point in outbox.decision_points:
                    metrics.DECISION_LATENCY.observe(max(0, done_ns - point) / 1e9)
                metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
            ready = job.ready()
            if ready and streams:
                stream = streams[0]
                for hold in ready:
                    await stream.ack(hold.ref)
            job.update_gauges()
            backpressure()

    @app.agent(spans_topic, name="tailsift-ingest")
    async def ingest(stream):
        streams[:] = [stream]
        async for events in stream.noack_take(j.batch_max_messages, within=j.batch_within_ms / 1000):
            if not restored.is_set():
                await restored.wait()
            if not flowing.is_set():
                await flowing.wait()
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
        restored.clear()
        lost = {tp.partition for tp in revoked if tp.topic == job.input_topic}
        if lost:
            async with lock:  # after any transaction in flight: the next owner restores what it wrote
                job.revoke(lost)
                backpressure()  # revoked buffers are gone: resume if that brought us under the mark
            log.info("partitions revoked: %s (their uncommitted spans will be reread)", sorted(lost))

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs) -> None:  # noqa: ANN001 - Faust signal signature
        restored.clear()
        try:
            parts = sorted(tp.partition for tp in assigned if tp.topic == job.input_topic)
            if parts:
                started = time.perf_counter()
                records = await asyncio.get_running_loop().run_in_executor(None, decision_log.read, config, parts)
                async with lock:
                    n = sum(job.restore(p, records[p]) for p in parts)
                metrics.RESTORE_SECONDS.observe(time.perf_counter() - started)
                log.info(
                    "partitions assigned: %s; %d decisions restored from %s in %.2f s",
                    parts,
                    n,
                    config.topics.decisions.name,
                    time.perf_counter() - started,
                )
        finally:
            restored.set()

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
    log.info(
        "tailsift worker %s: %s → %s, %s (metrics on :%s)",
        job.worker_id,
        job.input_topic,
        job.kept_topic,
        job.sli_topic,
        config.metrics.port or "off",
    )
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns via SystemExit
    return 0
