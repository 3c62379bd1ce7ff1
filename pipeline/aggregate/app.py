"""``tailsift aggregate``: the Faust app of the aggregation stage (per window, not per span).

One agent over ``topics.sli_windows`` (the SLI partials of every worker), tables as described in
``pipeline.aggregate.stage``, a timer for quiet partitions and four web views: ``/sli`` (recent
merged windows), ``/slo`` (SLO status), ``/metrics`` (for Grafana), ``/healthz``. Faust runs with
``processing_guarantee="exactly_once"``: that is what makes its consumer read ``read_committed``
(the workers write partials in transactions; an aborted partial must never be merged) and what
puts every table change — including the merged windows, written as changelog records of
``sli_merged`` — and the input offsets of a partition in one Kafka transaction.
"""

from __future__ import annotations

import logging
import struct
from collections import deque

import faust
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.aggregate import metrics as merged_metrics
from pipeline.aggregate.backlog import Backlog
from pipeline.aggregate.recovery import StageApp
from pipeline.aggregate.slo_book import SloBook
from pipeline.aggregate.stage import EmittedLog, Stage, _decode, recent_entry
from pipeline.config import Config
from pipeline.kafka import clients, security

log = logging.getLogger("tailsift.aggregate")


class TopicsMissing(Exception):
    pass


def check_topics(config: Config) -> None:
    watch = security.RefusalWatch(config.kafka)
    admin = AdminClient({**clients.base(config), **watch.settings()})
    try:
        existing = admin.list_topics(timeout=15).topics
    except Exception as exc:  # noqa: BLE001 - KafkaException on timeout, or a bad bootstrap string
        admin.poll(0)  # serves error_cb
        if refused := watch.refusal():  # say why, before Faust/aiokafka would retry it for ever
            raise security.KafkaRefused(refused) from None
        raise TopicsMissing(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
    t = config.topics
    missing = [
        f"topics.{k} ({getattr(t, k).name})"
        for k in ("sli_windows", "sli_merged", "slo_status")
        if getattr(t, k).name not in existing
    ]
    if missing:
        raise TopicsMissing(
            "missing topics: " + ", ".join(missing) + " — create them with `tailsift topics create -c CONFIG`"
        )
    want = len(existing[t.sli_windows.name].partitions)
    for k in ("sli_merged", "slo_status"):
        have = len(existing[getattr(t, k).name].partitions)
        if have != want:
            raise TopicsMissing(
                f"topics.{k} ({getattr(t, k).name}) has {have} partitions, topics.sli_windows has {want}: "
                "they must be equal (partition p's merged windows go to partition p)"
            )


class EmittedTable(faust.Table):
    """``sli_merged`` as a table changelog. Recovery remembers the keys (to recognise a replayed
    emission) and feeds the SLO book; no value is kept in the store."""

    def __init__(self, app, *, emitted_log: EmittedLog, book: SloBook, recent: deque, **kwargs):
        super().__init__(app, **kwargs)
        self.emissions = emitted_log
        self.book = book
        self.recent = recent

    def apply_changelog_batch(self, batch) -> None:
        for event in batch:
            key, value = event.message.key, event.message.value
            if key is None or value is None or self.emissions.remembers(key):
                continue  # already counted (a partition read back twice after a rebalance)
            partition = event.message.partition
            self.emissions.remember(partition, key)
            try:
                record = _decode(value)
            except Exception:  # noqa: BLE001 - not ours to judge here: skip what does not decode
                continue
            self.book.feed(partition, record)
            self.recent.append(recent_entry(partition, record))


TICK = struct.Struct(">q")


def ticks_topic(config: Config) -> str:
    return f"{config.kafka.group_id}-aggregate-ticks"


def ensure_ticks_topic(config: Config) -> None:
    """The stage's own tick topic (like Faust's changelogs, created by the stage): as many
    partitions as sli_windows, one hour of retention — a tick only matters until it is read."""
    admin = AdminClient(clients.base(config))
    name = ticks_topic(config)
    if name in admin.list_topics(timeout=15).topics:
        return
    topic = NewTopic(
        name,
        num_partitions=config.topics.sli_windows.partitions,
        replication_factor=config.topics.sli_windows.replication_factor,
        config={"retention.ms": "3600000"},
    )
    try:
        admin.create_topics([topic])[name].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def build_app(config: Config) -> tuple[faust.App, Stage]:
    from pipeline.slo_rules import objectives

    k, a, t = config.kafka, config.aggregate, config.topics
    partitions = t.sli_windows.partitions
    app = StageApp(  # a faust.App whose table recovery reads its changelogs to their end (see recovery.py)
        f"{k.group_id}-aggregate",
        broker=[f"kafka://{server.strip()}" for server in k.bootstrap_servers.split(",")],
        broker_credentials=security.faust_credentials(k),
        datadir=a.data_dir,
        autodiscover=False,
        processing_guarantee="exactly_once",
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=t.sli_windows.replication_factor,
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=k.heartbeat_interval_ms / 1000,
        broker_commit_interval=config.job.commit_interval_ms / 1000,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=a.web_host,
        web_host=a.web_host,
        web_port=a.web_port,
        # the stage holds no Faust windowed table: nothing for the cleanup timer to expire
        table_cleanup_interval=3_600.0,
        # no standby replicas: Faust keeps the transactional producer of a partition that moves to
        # another instance and stays here as a standby (it stops only the producers of revoked
        # *active* partitions); the new owner's producer fences it, and when the partition comes
        # back the fenced producer is reused — the first commit raised ProducerFenced and crashed
        # the stage. The tables are memory stores recovered from their changelogs either way.
        table_standby_replicas=0,
        recovery_poll_s=a.recovery_poll_ms / 1000,
    )
    # raw bytes both ways: key_type=bytes alone would still JSON-decode
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    table_raw = {"schema": faust.Schema(key_type=bytes, value_type=bytes, **raw)}
    # partials and ticks in one agent: both are partitioned like sli_windows (see ticks_topic)
    source = app.topic(t.sli_windows.name, ticks_topic(config), internal=False, **raw)
    book = SloBook(objectives(config))
    recent: deque = deque(maxlen=500)

    def internal_changelog(table: str):
        # explicit, raw: a changelog topic Faust derives for the table keeps its json serializers
        # (schema= or key_type=bytes notwithstanding) and the recovery then fails on every record
        return app.topic(
            f"{app.conf.id}-{table}-changelog", partitions=partitions, internal=True, compacting=True, **raw
        )

    open_table = app.Table("open", partitions=partitions, changelog_topic=internal_changelog("open"), **table_raw)
    views_table = app.Table("views", partitions=partitions, changelog_topic=internal_changelog("views"), **table_raw)
    emitted = app.tables.add(
        EmittedTable(
            app,
            name="emitted",
            beacon=app.tables.beacon,
            partitions=partitions,
            changelog_topic=app.topic(t.sli_merged.name, partitions=partitions, internal=False, **raw),
            emitted_log=EmittedLog(a.emitted_memory),
            book=book,
            recent=recent,
            **table_raw,
        )
    )
    status_table = app.Table(
        "slo-status",
        partitions=partitions,
        changelog_topic=app.topic(t.slo_status.name, partitions=partitions, internal=False, **raw),
        **table_raw,
    )
    backlog = Backlog(k, t.sli_windows.name, group_id=app.conf.id)
    stage = Stage(config, open_table, views_table, emitted, status_table, book, recent, backlog)

    partials_topic = t.sli_windows.name

    @app.agent(source, name="tailsift-aggregate")
    async def merge(stream):
        async for event in stream.events():
            msg = event.message
            async with stage.lock:
                if msg.topic == partials_topic:
                    await stage.on_partial(msg.partition, msg.offset, msg.value)
                else:
                    await stage.on_tick(msg.partition, msg.value)

    ticker = Producer({**clients.connection(k), "enable.idempotence": True, "linger.ms": 0})

    @app.timer(a.tick_ms / 1000, name="tailsift-aggregate-idle")
    async def idle() -> None:
        """Quiet partitions get a tick record instead of a table write from here: a write outside
        an event would sit in a Faust transaction that commits only with a new input offset."""
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        mine = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == partials_topic}
        for p, event_time_ns in stage.idle_partitions(mine).items():
            ticker.produce(ticks_topic(config), TICK.pack(event_time_ns), partition=p)
        ticker.poll(0)

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs) -> None:  # noqa: ANN001 - Faust signal signature
        async with stage.lock:
            stage.on_assigned({tp.partition for tp in assigned if tp.topic == partials_topic})

    @app.on_before_shutdown.connect
    async def on_shutdown(app_, **kwargs) -> None:  # noqa: ANN001 - Faust signal signature
        backlog.close()

    @app.page("/healthz")
    async def healthz(web, request):
        ready = app.tables.recovery.completed.is_set() and not app.rebalancing
        mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == t.sli_windows.name)
        return web.json(
            {
                "status": "ok" if ready else "recovering",
                "partitions": mine,
                "event_time_unix_nano": {p: stage.view(p) for p in mine},
                "open_windows": stage.open_windows(),
                "counts": stage.counts,
            },
            status=200 if ready else 503,
        )

    @app.page("/sli")
    async def sli(web, request):
        limit = int(request.query.get("limit", "100"))
        return web.json({"windows": stage.sli(request.query.get("service"), max(1, min(limit, 500)))})

    @app.page("/slo")
    async def slo(web, request):
        return web.json({"objectives": book.status(request.query.get("slo"))})

    metrics_registry = merged_metrics.registry(recent, book)

    @app.page("/metrics")
    async def metrics(web, request):
        # Prometheus text format; the percentiles Grafana shows merged over all workers
        body = generate_latest(metrics_registry)
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app, stage


def run(config: Config, loglevel: str = "info") -> int:
    from faust.worker import Worker

    check_topics(config)
    ensure_ticks_topic(config)
    app, _stage = build_app(config)
    a = config.aggregate
    log.info(
        "tailsift aggregate: %s → %s, %s (views on http://%s:%d/sli /slo /metrics /healthz)",
        config.topics.sli_windows.name,
        config.topics.sli_merged.name,
        config.topics.slo_status.name,
        a.web_host,
        a.web_port,
    )
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns via SystemExit
    return 0
