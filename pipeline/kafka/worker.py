"""The consumer loop: batches of messages from ``topics.spans_raw`` through ``pipeline.job.Job`` into
one transaction per commit interval. One thread, no framework object per message.

    every step:      consume(N) ─► Job.ingest(batch) ─► Job.decide_due() ─► produce into the open
                                                                          transaction (begun by
                                                                          the interval's first record)
    every interval:  Job.collect() (SLI partials, checkpoints) ─► produce ─► input offsets +
                     checkpoint metadata (KIP-447) ─► commit

Why decide at every step (the quix-streams checkpoint model): deciding once per interval made a
trace due just after a commit wait a whole interval *and then* the next interval's burst of deciding,
building, producing and committing everything due — seconds under a drain. Now a trace is decided,
built and handed to librdkafka (which sends it in the background) in the step it falls due; the
commit adds only the windows and offsets and waits for what is still in flight. Nothing counts as
written until that commit: the holds of every record in the transaction are released just before
it, and a failure at any point — producing at a step, beginning, producing at the commit, the
offsets, the commit — aborts the whole open transaction and rewinds, as does losing partitions.

Why offsets stay a low watermark: a trace's spans are buffered until its decision point, so the
committed offset of a partition is its oldest message whose trace is still undecided; everything
after it that was already counted (SLI partials, dead letters, re-keyed copies — written in every
transaction) is covered by the checkpoint metadata committed with the offset
(``pipeline.kafka.checkpoint``), and kept-trace offsets already written are listed in the decision
log. A restart or a new owner replays from the watermark and skips exactly what was written.

Rebalance (cooperative-sticky, incremental): before partitions are revoked, everything pending is
committed (one transaction), then their buffers, records and remembered decisions are dropped;
newly assigned partitions are restored — checkpoint from the committed metadata, decisions from the
log — inside the assign callback, so not one of their messages is processed before that; the open
transaction is committed first, since that restore may wait out a dead worker's transaction. Lost
partitions (the group expelled this worker) cannot be committed: everything is rewound.

Failure = rewind: a failed transaction is aborted, all uncommitted state is dropped, every assigned
partition is sought back to its committed offset and restored again — the state is then exactly
what a restart would build, without the restart — also after the coordinator aborted a transaction
left open past its timeout (a new producer takes over the transactional id: pipeline.kafka.producer).
A fatal producer error (fenced by a newer instance of the same transactional id) ends the worker
with exit code 3.

Stopping: SIGTERM/SIGINT end the loop after the current step; waits for a broker that is away
(restore, committed offsets) give up at once, and the process ends within ``STOP_GRACE_S`` of the
signal whatever holds it (``pipeline.kafka.shutdown``): exit 0 when it finished, 4 when not.

Backpressure: at ``assemble.max_buffered_*`` the assigned partitions are paused (librdkafka keeps
the fetch position of the next undelivered message: nothing fetched is skipped), and resumed under
80 % of the bounds.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline import metrics
from pipeline.config import Config
from pipeline.job import Job, Outbox, Record
from pipeline.job.records import Consumed
from pipeline.kafka import clients
from pipeline.kafka.checkpoint import Checkpoint
from pipeline.kafka.producer import EmitError, OutputProducer
from pipeline.kafka.read_times import CAUGHT_UP_MARGIN_MS, REKEY_MEMORY_MS, GroupReadTimes
from pipeline.kafka.restore import RestoreError, read_decisions
from pipeline.kafka.shutdown import ShutdownGuard

log = logging.getLogger("tailsift")

EXIT_FATAL = 3
# stopped by SIGTERM/SIGINT before it could finish cleanly (a restore or a write still waiting for
# the broker, or the grace below ran out): nothing committed is affected, the rest is reread
EXIT_UNFINISHED = 4
# from the stop signal to the process's end, at most (pipeline.kafka.shutdown)
STOP_GRACE_S = 15.0
# a rewind's seek is a local operation of librdkafka's: this long means it will not end
SEEK_TIMEOUT_S = 30.0
# a restore waits this long for a broker that is away (a restart takes tens of seconds here)
RESTORE_PATIENCE_S = 300.0
# a partition otherwise unchanged is committed again when its read time moved this much (ms): the
# group's decisions wait for it (pipeline.kafka.read_times)
READ_MS_STEP = 100
# ... or when the time it last re-keyed a message moved this much (ms): the group counts it as
# re-keying for an hour after (read_times.REKEY_MEMORY_MS), so a refresh a minute is plenty
REKEYED_MS_STEP = 60_000
# a commit taking longer than this is logged with its phases (its interval's decisions wait for it)
SLOW_COMMIT_S = 0.25
# weight of the latest step in the per-message cost the batch size is derived from
STEP_COST_WEIGHT = 0.25


class FatalError(RuntimeError):
    """The worker cannot go on (fenced producer, fatal client error): exit non-zero."""


class StopRequested(RuntimeError):
    """A stop signal came while the worker waited for the broker (a restore, a rewind): it leaves
    without finishing what it was waiting for."""


class Worker:
    def __init__(self, config: Config, job: Job):
        self.config = config
        self.job = job
        self.topic = config.topics.spans_raw.name
        j = config.job
        self.exactly_once = job.exactly_once
        self.consumer = Consumer(clients.input_consumer(config))
        tid = f"tailsift.{config.kafka.group_id}.{job.worker_id}" if self.exactly_once else None
        self.producer = OutputProducer(clients.producer(config, tid))
        self.batch_max = j.batch_max_messages
        self.batch_wait = j.batch_within_ms / 1000
        self.tick = j.tick_ms / 1000
        # exactly_once: one transaction per commit interval; at_least_once: write on every tick
        self.interval = j.commit_interval_ms / 1000 if self.exactly_once else self.tick
        self.step_budget = j.step_budget_ms / 1000  # 0: whole batches (see _size_batch)
        self.batch = self.batch_max  # messages asked of the next consume() (_size_batch)
        self.message_cost = 0.0  # seconds of step per message, smoothed (0: not measured yet)
        self.assigned: set[int] = set()
        self.through: dict[int, int] = {}  # partition → checkpoint: side outputs written up to here
        self.committed: dict[int, tuple[int, int]] = {}  # partition → (offset, through) last committed
        self.paused = False
        self.paused_set: set[int] = set()
        self.paused_since = 0.0
        self.stopping = False
        self.guard = ShutdownGuard(self._stop, STOP_GRACE_S, EXIT_UNFINISHED)
        self.rewind_needed = False
        self.last_flush = time.monotonic()
        # produced into the open transaction since the last commit, and their traces' decision points
        self.open_records: list[Record] = []
        self.open_points: list[int] = []
        # the group's read time (pipeline.kafka.read_times): what this worker publishes per owned
        # partition in its checkpoints (ms), and its view of the others' (made on first use)
        self.read_ms: dict[int, int] = {}
        # ... and when a message read there was last re-keyed (ms, worker clock), as committed: in
        # auto mode the group waits only for partitions that re-key
        self.rekeyed_ms: dict[int, int] = {}
        self.group_read_times: GroupReadTimes | None = None

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        self.guard.install()
        md = self.consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        self.job.input_partitions = len(md.partitions)
        try:
            self.job.max_record_bytes = clients.max_record_bytes(self.config)
        except KafkaException as exc:  # e.g. no DescribeConfigs permission: the producer's own limit
            log.warning("cannot read the output topics' max.message.bytes (%s); assuming 1 MB", exc.args[0])
        self.consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        code = self._loop()
        self.stopping = True  # the revoke callback during close() must not write again
        # from here the process has STOP_GRACE_S to end: closing the clients (below, and when they
        # are freed) cannot hold it
        self.guard.arm(code)
        try:
            if code == 0:
                self.consumer.close()
            # else no close(): after an error raised inside a rebalance callback the rebalance
            # never completes and librdkafka's close() waits for it forever — seen as a worker
            # that hung, silent even to SIGTERM, after a broker restart. Leaving without it is a
            # crash the group handles (session timeout) and exactly-once survives (uncommitted).
        finally:
            if self.group_read_times is not None:
                self.group_read_times.close()
            self.producer.close()
        return code

    def _loop(self) -> int:
        """Steps until stopped; the exit code."""
        try:
            while not self.stopping:
                self._step()
            self._flush()  # what is decided so far; buffered traces are reread by the next owner
            return 0
        except FatalError as exc:
            log.error("tailsift worker stops: %s", exc)
            return EXIT_FATAL
        except StopRequested as exc:
            log.warning("tailsift worker stops unfinished: %s", exc)
            return EXIT_UNFINISHED
        except Exception:  # a bug or an unforeseen client error: exit for the supervisor, never hang
            log.exception("tailsift worker stops on an unexpected error")
            return EXIT_FATAL

    def _stop(self, signum: int) -> None:
        log.info("signal %d: stopping after the current step", signum)
        self.stopping = True

    def _step(self) -> None:
        job = self.job
        wait = max(0.0, min(self.batch_wait, self.last_flush + self.interval - time.monotonic()))
        messages = self.consumer.consume(self.batch, wait)
        started = time.perf_counter()
        if self.rewind_needed:  # partitions were lost inside consume(): their work cannot be committed
            self._discard_open()
            self._rewind()
            messages = []  # fetched before the rewind's seek: read again from the committed offsets
        if messages:
            job.ingest(self._columns(messages), time.time_ns())
        # decide at every step, not once per interval: a trace due now leaves in the open
        # transaction at once, and the interval's commit only adds the SLI partials and offsets.
        # Nothing buffered, nothing can be due: the lag report (librdkafka calls per partition) is
        # skipped, and the next decision with something buffered reports it afresh
        behind = self._behind() if len(job.assembler) else None
        due = job.decide_due(time.time_ns(), behind=behind)
        produced = not due.records or self._produce_open(due)
        took = time.perf_counter() - started
        metrics.STEP_SECONDS.observe(took)
        if self.step_budget and messages:
            self._size_batch(len(messages), took)
        # buffer gauges and the service graph's counters once per interval, in _flush
        if produced and time.monotonic() - self.last_flush >= self.interval:
            self._flush()  # (not produced: the write failed and the worker rewound, nothing to commit)
        self._backpressure()

    @staticmethod
    def _columns(messages: list) -> Consumed:
        """The consumed messages as the job takes them: a column per field, no object per message
        (each column one comprehension over librdkafka's messages); error events are logged and
        left out."""
        if any([m.error() is not None for m in messages]):
            for m in messages:
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err)
            messages = [m for m in messages if m.error() is None]
        now_ms = int(time.time() * 1000)  # the batch's read time: each message's "since" if it heads a commit
        return Consumed(
            [m.partition() for m in messages],
            [m.offset() for m in messages],
            [m.key() for m in messages],
            [m.value() for m in messages],
            [m.timestamp()[1] for m in messages],
            [now_ms] * len(messages),
        )

    def _size_batch(self, messages: int, took: float) -> None:
        """``job.step_budget_ms`` > 0: the next consume()'s batch while a backlog is read (consume()
        returned all it was asked for) — as many messages as fit the budget at the per-message cost
        of recent such steps (ingest, and the deciding their traces bring, in wall time, so a worker
        short of CPU takes fewer), between 1 and ``job.batch_max_messages``. A trace due mid-step
        waits for the rest of the step, and so does a commit whose interval ran out: a drain runs in
        steps of about the budget instead of whole batches (seen: 0.1–1.6 s per 500-message step on
        the loaded bench machine). The price: commits then keep to their interval — more
        transactions and SLI partials per span — and more steps (README Design, measured). Caught
        up, the batch is ``batch_max_messages`` again: consume() waits up to ``batch_within_ms``
        for what arrives, and a smaller batch would only cut the same input into more steps."""
        if messages < self.batch:  # caught up: consume() waited for what there was
            self.batch = self.batch_max
            return
        cost = took / messages
        if self.message_cost:
            cost = self.message_cost + STEP_COST_WEIGHT * (cost - self.message_cost)
        self.message_cost = cost
        self.batch = self.batch_max if cost <= 0 else max(1, min(self.batch_max, round(self.step_budget / cost)))

    def _produce_open(self, out: Outbox) -> bool:
        """A step's records into the open transaction (at_least_once: the producer's queue). They
        count as written only when ``_flush`` commits that transaction; False when producing failed
        (the transaction is aborted and the worker rewound)."""
        try:
            self.producer.produce(out.records)
        except EmitError as exc:
            self._write_failed(exc)
            return False
        self.open_records.extend(out.records)
        self.open_points.extend(out.decision_points)
        return True

    def _discard_open(self) -> None:
        """Abort the open transaction before a rewind: it holds records derived from the state the
        rewind drops (at_least_once: what was queued may still be written — a duplicate, not a loss)."""
        self.open_records.clear()
        self.open_points.clear()
        try:
            self.producer.abort()
        except EmitError as exc:
            raise FatalError(str(exc)) from None

    def _write_failed(self, exc: EmitError | KafkaException) -> None:
        """The producer aborted what it could: rewind to the committed offsets, or stop if it is
        unusable."""
        self.open_records.clear()
        self.open_points.clear()
        if isinstance(exc, EmitError) and exc.fatal:
            raise FatalError(str(exc)) from None
        log.warning("write failed, rewinding to the committed offsets: %s", exc)
        metrics.REWINDS.inc()
        self._rewind()

    def _read_state(self) -> dict[int, tuple[int, int, int]]:
        """Per owned partition: (position, low, high) — the next offset to read (< 0: none yet) and
        librdkafka's cached watermarks (no broker round trip; < 0: none fetched yet)."""
        tps = [TopicPartition(self.topic, p) for p in self.assigned]
        out = {}
        for tp in self.consumer.position(tps) if tps else ():
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            out[tp.partition] = (tp.offset, low, high)
        return out

    def _unread(self, state: dict[int, tuple[int, int, int]] | None = None) -> dict[int, int]:
        """Per owned partition, messages not yet read. A partition with no position yet — just
        assigned or rewound, nothing read since — is fetched from its committed offset: it counts
        the rest from there (from its low watermark when nothing is committed). Counting from 0
        made a rewound partition that nothing new arrived on "behind" by its whole length for good:
        a phantom input lag (the zombie test's survivor: 2,954 with everything committed) and a
        backlog guard holding its processing-time decisions to the hard bound."""
        state = self._read_state() if state is None else state
        return {p: max(0, high - max(self._fetch_from(p, pos), low, 0)) for p, (pos, low, high) in state.items()}

    def _fetch_from(self, p: int, pos: int) -> int:
        """The next offset partition ``p`` is read from: librdkafka's position, else (nothing read
        since it was assigned or rewound) its committed offset (-1: none)."""
        return pos if pos >= 0 else self.committed.get(p, (-1, -1))[0]

    def _lag(self) -> int:
        """Messages of owned partitions not yet read. After a rewind nothing is buffered, but this
        is not zero until the replay is read."""
        return sum(self._unread().values())

    def _behind(self) -> list[int]:
        """Owned partitions not read to the end: processing-time decisions on them also wait for
        their input to be read far enough (operators.assemble). Also hands the job the group's read
        time per owned partition, which they wait for as well (``pipeline.kafka.read_times``)."""
        state = self._read_state()
        if self._waits_for_group():
            if self.group_read_times is None:
                self.group_read_times = GroupReadTimes(self.config, self.topic, self.job.input_partitions)
            positions = {p: self._fetch_from(p, pos) for p, (pos, _, _) in state.items()}
            self.job.assembler.set_group_read_times(
                self.group_read_times.update(self.assigned, positions, time.monotonic(), self._rekeying())
            )
        return [p for p, n in self._unread(state).items() if n]

    def _waits_for_group(self) -> bool:
        """Whether decisions wait for the group's read time: ``assemble.group_read_time`` on or auto
        (the default; not with ``ingest.rekey: false``, which re-keys nothing), processing time with
        the backlog guard on, and an input of more than one partition (with one, nothing is
        re-keyed). In auto mode only partitions whose readers re-key are waited for
        (``pipeline.kafka.read_times``): on keyed input (`make bench`) nothing is — waiting for
        every partition held its drain to the slowest one, p99 1.9 → 4.9 s (27 s at 20K traces)."""
        mode = self.config.assemble.group_read_time
        if mode is False or (mode == "auto" and not self.config.ingest.rekey):
            return False
        return self.job.assembler.guarded and self.job.input_partitions > 1

    def _rekeying(self) -> list[int]:
        """Owned partitions this worker (or, as restored, their last owner) re-keyed a message from
        in the last ``REKEY_MEMORY_MS``: in auto mode the group read times wait for them at once,
        not only once their next commit is in a snapshot (``GroupReadTimes.update``)."""
        if self.config.assemble.group_read_time != "auto":
            return []
        since = int(time.time() * 1000) - REKEY_MEMORY_MS
        return [p for p in self.assigned if self._rekeyed_mark(p) >= since]

    def _rekeyed_mark(self, p: int) -> int:
        """When a message read from ``p`` was last re-keyed (ms; -1: never), as the next checkpoint
        says it: by this worker, or as the partition's last owner committed it."""
        t_ns = self.job.rekeyed_ns.get(p, -1)
        return max(t_ns // 1_000_000 if t_ns >= 0 else -1, self.rekeyed_ms.get(p, -1))

    def _read_mark(self, p: int, pos: int, low: int, high: int, now_ms: int) -> int:
        """The read time (ms, -1: unknown) to commit with partition ``p``'s offset: how far it is
        read in Kafka time — read to the end (nothing left there to re-key), at least this worker's
        clock less a margin; never lower than what was committed before."""
        if not self._waits_for_group():
            return -1  # no decision waits for it
        t_ns = self.job.assembler.progress.time(p)
        t = t_ns // 1_000_000 if t_ns >= 0 else -1
        if high >= 0 and (pos >= high if pos >= 0 else low == high or self.committed.get(p, (-1, -1))[0] == high):
            t = max(t, now_ms - CAUGHT_UP_MARGIN_MS)
        return max(t, self.read_ms.get(p, -1))

    # ------------------------------------------------------------------ writing
    def _commit_offsets(self, now_ms: int) -> list[TopicPartition]:
        """Per owned partition: the committed position (oldest message not yet done, else the next
        to read) with its checkpoint metadata."""
        heads = self.job.tracker.heads()
        # librdkafka's position: after the last message handed to the job, and past the commit
        # markers behind it (offset + 1 of the last message would stop short of a marker forever)
        state = self._read_state()
        out = []
        for p in sorted(self.assigned):
            pos, low, high = state.get(p, (-1, -1, -1))
            read_ms = self._read_mark(p, pos, low, high, now_ms)
            rekeyed_ms = self._rekeyed_mark(p)
            committed_rekey = self.rekeyed_ms.get(p, -1)
            rekeyed = rekeyed_ms >= 0 and (committed_rekey < 0 or rekeyed_ms - committed_rekey >= REKEYED_MS_STEP)
            head = heads.get(p)
            if head is not None:
                offset, since = head.offset, head.ref
            elif pos >= 0:
                offset, since = pos, now_ms
            else:  # nothing read yet: the committed offset stands, unless only its read time moves
                offset = self.committed[p][0] if p in self.committed else high if 0 <= low == high else -1
                if offset < 0 or read_ms <= self.read_ms.get(p, -1):
                    continue
                since = now_ms
            through = self.through.get(p, -1)
            if (
                self.committed.get(p) == (offset, through)
                and read_ms < self.read_ms.get(p, -1) + READ_MS_STEP
                and not rekeyed
            ):
                continue  # unchanged (its read time by less than a step): no need to commit it again
            self.read_ms[p] = read_ms
            self.rekeyed_ms[p] = rekeyed_ms
            cp = Checkpoint(through, since, read_ms, rekeyed_ms)
            out.append(TopicPartition(self.topic, p, offset, metadata=cp.encode()))
        return out

    def _flush(self) -> None:
        """Close the interval: decide what is due, close due windows, and commit the open
        transaction — every record produced into it since the last commit, these, and the input
        offsets with their checkpoints (at_least_once: wait for every acknowledgement, then commit
        the offsets)."""
        self.last_flush = time.monotonic()
        job = self.job
        started = time.perf_counter()
        outbox = job.collect(time.time_ns(), behind=self._behind())
        collected = time.perf_counter()
        records = outbox.records
        # what the transaction below commits: the records produced into it at earlier steps and
        # these. It writes all of them or none: count them delivered now, and roll the whole state
        # back (rewind) if it fails — so no hold is released for a record outside this transaction
        written = self.open_records + records if self.open_records else records
        job.delivered(written)
        job.ready()  # done messages leave the tracker: the committed position moves past them
        for p, offset in outbox.checkpoints.items():
            self.through[p] = max(self.through.get(p, -1), offset)
        offsets = self._commit_offsets(int(time.time() * 1000))
        try:
            if self.exactly_once:
                self.producer.transaction(records, offsets, self.consumer.consumer_group_metadata())
            else:
                if records or self.producer.open:
                    self.producer.write(records)
                if offsets:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
        except (EmitError, KafkaException) as exc:
            self._write_failed(exc)
            return
        points = self.open_points + outbox.decision_points if self.open_points else outbox.decision_points
        self.open_records = []
        self.open_points = []
        for tp in offsets:
            self.committed[tp.partition] = (tp.offset, self.through.get(tp.partition, -1))
        produced: dict[str, int] = {}
        for r in written:
            produced[r.topic] = produced.get(r.topic, 0) + 1
        for topic, n in produced.items():  # one labelled increment per topic, not per record
            metrics.RECORDS_PRODUCED.labels(topic).inc(n)
        if written:
            done_ns = time.time_ns()
            for point in points:
                metrics.DECISION_LATENCY.observe(max(0, done_ns - point) / 1e9)
            took = time.perf_counter() - started
            metrics.FLUSH_SECONDS.observe(took)
            if took > SLOW_COMMIT_S:  # what a slow commit spent its time on: the decision latency p99
                produce_s, offsets_s, commit_s = self.producer.phases if self.exactly_once else (0, 0, 0)
                decided, decide_s, collected_n, windows_s = job.collect_phases
                log.info(
                    "slow commit: %.2f s (collect %.3f: %d decided in %.3f, windows %.3f, %d records; produce %.3f, "
                    "offsets %.3f, commit %.3f) for %d records, %d decisions since the last commit",
                    took,
                    collected - started,
                    decided,
                    decide_s,
                    windows_s,
                    collected_n,
                    produce_s,
                    offsets_s,
                    commit_s,
                    len(written),
                    len(points),
                )
        metrics.INPUT_LAG.set(self._lag())
        job.update_gauges()

    # ------------------------------------------------------------------ rebalance and rewind
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = sorted(tp.partition for tp in partitions if tp.topic == self.topic)
        if not parts:
            return
        if self.producer.open and not self.stopping and not self.rewind_needed:
            # commit what is open first: the restore below can wait tens of seconds — a dead worker's
            # transaction still open on these partitions' decision log keeps the read_committed
            # reader below its end (or, once it sent offsets, holds their committed offsets: KIP-447)
            # until the broker times it out (its transaction_timeout_ms, then the broker's abort scan,
            # every 10 s by default) — and an interval of ours left open across that wait was timed
            # out by the coordinator in turn (seen: ~21 s in the assign callback after a worker was
            # killed, then the survivor's next commit fenced and exit 3; 11 s measured in a quiet run)
            self._flush()
        self.assigned.update(parts)
        self._restore(parts)
        log.info("partitions assigned: %s", parts)

    def _restore(self, parts: list[int]) -> None:
        """Checkpoint and decisions of ``parts`` before any of their messages is processed. Runs
        inside the assign callback: a broker away (restarting) is waited out here, with a bound,
        rather than raised through the rebalance."""
        deadline = time.monotonic() + RESTORE_PATIENCE_S
        while True:
            try:
                return self._restore_once(parts)
            except (KafkaException, TimeoutError, RestoreError) as exc:
                if self.stopping:
                    raise StopRequested(f"restoring partitions {parts} did not finish: {exc}") from None
                if time.monotonic() > deadline:
                    raise FatalError(
                        f"restoring partitions {parts} failed for {RESTORE_PATIENCE_S:.0f} s: {exc}"
                    ) from None
                log.warning("restoring partitions %s failed (%s); retrying", parts, exc)
                time.sleep(1.0)

    def _restore_once(self, parts: list[int]) -> None:
        started = time.perf_counter()
        committed = self._committed(parts)
        now_ms = int(time.time() * 1000)
        since, through = {}, {}
        for tp in committed:
            cp = Checkpoint.decode(tp.metadata)
            if cp is None:  # first run, or committed by something else: read back from now
                since[tp.partition] = now_ms
            else:
                since[tp.partition], through[tp.partition] = cp.since_ms, cp.through
            if tp.offset >= 0:
                self.committed[tp.partition] = (tp.offset, through.get(tp.partition, -1))
            # what the partition's last owner (maybe this worker) published goes on from there
            self.read_ms[tp.partition] = cp.read_ms if cp is not None else -1
            self.rekeyed_ms[tp.partition] = cp.rekeyed_ms if cp is not None else -1
        if self.group_read_times is not None:  # a new position here: copies are read anew
            self.group_read_times.forget(parts)
        records = read_decisions(self.config, since, stopping=lambda: self.stopping)
        n = 0
        for p in parts:
            t = through.get(p, -1)
            self.through[p] = t
            n += self.job.restore(p, records.get(p, ()), t)
        metrics.RESTORE_SECONDS.observe(time.perf_counter() - started)
        log.info(
            "partitions %s: %d decisions restored from %s in %.2f s",
            parts,
            n,
            self.config.topics.decisions.name,
            time.perf_counter() - started,
        )

    def _committed(self, parts: list[int]) -> list[TopicPartition]:
        """Committed offsets and metadata. While a dead worker's transaction holding offsets of these
        partitions is open, the broker withholds them (unstable offsets, KIP-447) until the
        transaction times out; a broker restart takes tens of seconds: wait for both, then some."""
        deadline = time.monotonic() + self.config.job.transaction_timeout_ms / 1000 + 300
        tps = [TopicPartition(self.topic, p) for p in parts]
        while True:
            try:
                return self.consumer.committed(tps, timeout=10)
            except KafkaException as exc:
                if self.stopping:
                    raise StopRequested(f"committed offsets of {self.topic} {parts} unavailable: {exc}") from None
                if time.monotonic() > deadline:
                    raise FatalError(f"committed offsets of {self.topic} {parts} unavailable: {exc}") from None
                log.info("committed offsets of %s not available yet (%s); retrying", parts, exc.args[0])
                time.sleep(0.5)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions if tp.topic == self.topic}
        if not lost:
            return
        if not self.stopping and not self.rewind_needed:
            try:
                self._flush()  # commit what was done on them while they are still ours
            except FatalError:
                raise
        self._forget(lost)
        log.info("partitions revoked: %s (their uncommitted spans will be reread)", sorted(lost))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group moved these partitions without asking (session timeout): whatever this worker
        has not committed may be redone by their new owner, and its next commit would be fenced."""
        lost = {tp.partition for tp in partitions if tp.topic == self.topic}
        log.warning("partitions lost: %s; rewinding everything uncommitted", sorted(lost))
        self._forget(lost)
        self.rewind_needed = True

    def _forget(self, lost: set[int]) -> None:
        self.job.revoke(lost)
        self.assigned -= lost
        for p in lost:
            self.through.pop(p, None)
            self.committed.pop(p, None)
            self.read_ms.pop(p, None)
            self.rekeyed_ms.pop(p, None)

    def _rewind(self) -> None:
        """Drop all uncommitted state and read every owned partition again from its committed
        offset, restoring checkpoint and decisions as a restart would."""
        self.rewind_needed = False
        metrics.INPUT_LAG.set(max(1, self._lag()))  # not drained until the replay is read
        parts = sorted(self.assigned)
        self.job.reset(parts)
        self.through.clear()
        self.committed.clear()
        if not parts:
            return
        committed = self._committed(parts)
        # A partition nothing was read from since it was assigned (or since the last rewind) is
        # fetched from its committed offset already — and a seek before its fetcher has started
        # (the assignment still reading committed offsets, held back by an open transaction)
        # fails with _STATE.
        read = {
            tp.partition
            for tp in self.consumer.position([TopicPartition(self.topic, p) for p in parts])
            if tp.offset >= 0
        }
        seeks = []
        for tp in committed:
            if tp.partition not in read:
                continue
            offset = tp.offset
            if offset < 0:  # nothing committed: back to the reset policy's start
                lo, _hi = self.consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=10)
                offset = lo
            seeks.append(TopicPartition(self.topic, tp.partition, offset))
        self._seek(seeks)
        self._restore(parts)

    def _seek(self, tps: list[TopicPartition]) -> None:
        """``Consumer.seek`` with a bound: confluent-kafka's waits for librdkafka's answer without
        one (``rd_kafka_seek_partitions(rk, parts, -1)``), and nothing on the loop thread may wait
        for good. It runs on a helper thread while this one waits; past ``SEEK_TIMEOUT_S`` the
        worker exits for its supervisor (FatalError) instead of hanging."""
        if not tps:
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def seek_all() -> None:
            try:
                for tp in tps:
                    self.consumer.seek(tp)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop thread
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=seek_all, name="rewind-seek", daemon=True).start()
        if not done.wait(SEEK_TIMEOUT_S):
            raise FatalError(
                f"seeking {self.topic} {[tp.partition for tp in tps]} back did not finish in {SEEK_TIMEOUT_S:.0f} s"
            )
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ backpressure
    def _backpressure(self) -> None:
        job = self.job
        if self.paused:
            if job.below_resume_mark() or not self.assigned:
                self._set_paused(False)
            elif self.assigned != self.paused_set:  # partitions assigned while paused: pause them too
                self._set_paused(True)
        elif self.config.assemble.overflow == "backpressure" and job.over_bound():
            self._set_paused(True)
            log.info(
                "backpressure: %d spans / %d bytes buffered, input paused",
                job.assembler.buffered_spans,
                job.assembler.buffered_bytes,
            )

    def _set_paused(self, paused: bool) -> None:
        tps = [TopicPartition(self.topic, p) for p in sorted(self.assigned)]
        if paused:
            self.consumer.pause(tps)
            self.paused_set = set(self.assigned)
            if not self.paused:
                self.paused_since = time.monotonic()
        else:
            if tps:
                self.consumer.resume(tps)
            metrics.BACKPRESSURE_SECONDS.inc(time.monotonic() - self.paused_since)
        self.paused = paused
        metrics.PAUSED.set(1 if paused else 0)
