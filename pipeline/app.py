"""``tailsift run``: one worker of the stream job.

The data plane is ``pipeline.kafka.worker`` (librdkafka: batches in, one Kafka transaction per
commit interval out); the computing core is ``pipeline.job.Job``. This module checks what the job
needs before it starts (keys, topics) and wires the two together.
"""

from __future__ import annotations

import gc
import logging
import time

from confluent_kafka.admin import AdminClient

from pipeline import metrics
from pipeline.config import Config
from pipeline.job import Job
from pipeline.kafka import clients, security

log = logging.getLogger("tailsift")


CONNECT_PATIENCE_S = 60.0
WORKER_TOPICS = ("spans_raw", "traces_kept", "sli_windows", "deadletter", "pii_audit", "decisions")


# gen0 collections at this many new container objects, not CPython's 700 (README "Performance")
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """The cycle collector set for the job's allocation pattern, once its long-lived objects exist.
    Every consumed batch allocates thousands of short-lived containers (messages, fragments, span
    lists, records) that are still alive when CPython's default threshold (700) fires, so each
    gen0/gen1 collection walked live batch objects for nothing: ~3 µs of the job core's ~30 µs per
    span on ``make bench``'s traffic, ~0.5 µs at 20,000 (``gc.callbacks`` timing, same process).
    What exists at start (modules, config, the protector's tables, the clients: ~50K objects) lives
    as long as the process: frozen, so full collections stop walking it. Cycles are still
    collected, a little later; the data the job holds is bounded by its own limits."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


class TopicsMissing(Exception):
    pass


def check_topics(config: Config) -> None:
    """Fail fast, with the fix, when the topics the job needs do not exist."""
    watch = security.RefusalWatch(config.kafka)
    admin = AdminClient({**clients.base(config), **watch.settings()})
    # a worker (re)started while the broker restarts waits for it a while before giving up
    deadline = time.monotonic() + CONNECT_PATIENCE_S
    while True:
        try:
            existing = admin.list_topics(timeout=10).topics
            break
        except Exception as exc:  # noqa: BLE001 - KafkaException on timeout, or a bad bootstrap string
            admin.poll(0)  # serves error_cb
            if refused := watch.refusal():  # bad credentials or protocol: waiting would not help
                raise security.KafkaRefused(refused) from None
            if time.monotonic() > deadline:
                raise TopicsMissing(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
            log.warning("cannot reach Kafka at %s yet (%s); retrying", config.kafka.bootstrap_servers, exc)
    # the worker's own topics; the aggregation stage checks sli_merged / slo_status itself
    mine = {k: t for k, t in config.topics.all().items() if k in WORKER_TOPICS}
    missing = [f"topics.{k} ({t.name})" for k, t in mine.items() if t.name not in existing]
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


def run(config: Config, loglevel: str = "info") -> int:
    """Run the worker until SIGTERM/SIGINT. Returns the process exit code."""
    from pipeline.kafka.worker import Worker

    protector = None
    if config.privacy.enabled:
        from pipeline.privacy import build_protector, infrastructure_addresses, install_log_protection

        # Keys first: a missing key stops the worker before it connects or consumes anything
        # (PrivacyKeyError → `tailsift run` exits 2 naming the variable or file).
        protector = build_protector(config.privacy)
        known = infrastructure_addresses(config.kafka.bootstrap_servers, config.metrics.host or "")
        install_log_protection(protector, known)
    else:
        log.warning("privacy.enabled is false: kept traces leave without PII protection (see README 'Privacy')")
    check_topics(config)
    job = Job(config, protector=protector)
    worker = Worker(config, job)
    metrics.serve(config.metrics.port, config.metrics.host)
    tune_gc()
    log.info(
        "tailsift worker %s: %s → %s, %s (%s; metrics on :%s)",
        job.worker_id,
        job.input_topic,
        job.kept_topic,
        job.sli_topic,
        config.job.processing_guarantee,
        config.metrics.port or "off",
    )
    return worker.run()
