"""The output side: one confluent-kafka producer per worker.

exactly_once: one Kafka transaction per commit interval, kept open while the interval runs — the
quix-streams checkpoint model. ``produce(records)`` writes into the open transaction (begun by the
first records of an interval), so records leave as they are built, step by step, instead of all at
once at the end of the interval; ``transaction(records, offsets, group_metadata)`` adds the
interval's last records, sends the input offsets (with their checkpoint metadata) and commits —
KIP-447: the offsets carry the consumer's group generation, so a worker that lost its partitions (a
zombie resumed after SIGSTOP, a member the group expelled) cannot commit: its transaction fails and
is aborted, nothing it wrote becomes visible to ``read_committed`` readers. Until that commit,
nothing produced is visible to them either.

at_least_once: ``produce(records)`` queues records as they are built; ``write(records)`` queues the
last ones and waits for every acknowledgement since the previous ``write``; the caller then commits
the offsets with the consumer.

Any failure raises ``EmitError`` after aborting what can be aborted (the whole open transaction:
every record of the interval); ``fatal`` says whether this producer is unusable from now on (fenced
by a newer instance of the same transactional id, or a fatal librdkafka error) — the worker then
exits — or the caller may rewind and go on. ``abort()`` drops the open transaction on the caller's
behalf (partitions lost: the rewind discards what it holds).

A transaction the coordinator aborted because it stayed open past ``transaction.timeout.ms`` (the
worker held in a long restore, a GC or VM pause shorter than its session) is not a zombie: the
coordinator bumps the producer epoch when it times a transaction out, and librdkafka then reports
the next call exactly as it reports a newer instance's takeover — fatal ``_FENCED`` ("fenced by a
newer instance"), from a ProduceRequest's ``INVALID_PRODUCER_EPOCH`` or the coordinator's
``PRODUCER_FENCED``, on Kafka 4.1 as on older brokers (seen on the broker: the same error, code and
text, both ways). Only the time tells them apart: a transaction open for less than the timeout
cannot have been timed out, so its fence is a newer instance's — fatal, the worker exits and never
writes again. One open for at least the timeout was aborted by the coordinator whatever else
happened; then a new producer takes over the same transactional id (``init_transactions``), the
caller rewinds as after any failed transaction, and goes on (``tailsift_producers_replaced_total``).
A real zombie that slept past the timeout as well fences the newer instance once that way; that
one's next transaction, younger than the timeout, is then fenced for good and it exits for its
supervisor, whose restart fences the zombie in turn — outputs stay exact throughout (KIP-447: the
offsets in every transaction carry the group generation).

No delivery callback on the transactional producer: a record that is not delivered fails the
transaction's commit (librdkafka makes every produce failure an abortable transaction error), so
the callback added nothing but a Python call per record — and confluent-kafka (2.16.1) leaves the
fatal error it raises from its error callback pending while it serves the rest of the queue, so the
next delivery callback runs with an exception set and fails (seen on the way out:
``SystemError: __format__ of KafkaError returned a result with an exception set`` from ``flush``).
A producer that had a fatal error is never flushed again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from pipeline import metrics
from pipeline.kafka.faults import Faults

log = logging.getLogger("tailsift")

# send_offsets_to_transaction's own timeout (it takes milliseconds when the broker is there), and
# how long past it the call may take before it is given up
SEND_OFFSETS_TIMEOUT_S = 30.0
SEND_OFFSETS_SLACK_S = 10.0
# librdkafka's default transaction.timeout.ms
DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000
# how librdkafka reports a producer epoch that moved on (KafkaError._FENCED is its name for both)
FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


class EmitError(RuntimeError):
    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


class OutputProducer:
    def __init__(self, conf: dict, commit_timeout_s: float = 60.0):
        self.transactional = "transactional.id" in conf
        self._conf = dict(conf)  # a replacement producer takes the same settings and transactional id
        self._transaction_timeout_s = conf.get("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS) / 1000
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self._timeout = commit_timeout_s
        self._faults = Faults()
        # records produced since the last commit (exactly_once: a transaction is open) or write
        self.open = False
        self._begun = 0.0  # when the open transaction began (monotonic)
        self.wedged = False  # a transactional call never returned (see _send_offsets)
        self.fatal = False  # a fatal error: this producer is never used (nor flushed) again
        # the last transaction's phases in seconds — produce, send offsets, commit — for the worker's
        # slow-commit log line (a slow commit holds every decision of its interval: the latency p99)
        self.phases = (0.0, 0.0, 0.0)
        # delivery errors come back through the commit when transactional (see the module doc)
        self._on_delivery_cb = None if self.transactional else self._on_delivery
        if self.transactional:
            self._init_transactions()

    def _init_transactions(self, patience_s: float = 300.0) -> None:
        """Fences an older producer with the same id and aborts its open transaction. Called again
        while it times out (librdkafka resumes it): a worker started while the broker restarts
        waits for its transaction coordinator to load (seen: exit 1 with a traceback after 30 s)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self._producer.init_transactions(30)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or err.fatal() or time.monotonic() > deadline:
                    raise
                log.warning("init_transactions: %s; calling it again", err)

    def _on_delivery(self, err, msg) -> None:  # noqa: ANN001 - librdkafka callback
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def _begin(self) -> None:
        """Open the interval: a transaction (exactly_once), a fresh error list either way."""
        self._errors.clear()
        if self.transactional:
            self._producer.begin_transaction()
        self.open = True  # only once begun: a failure before has no transaction to abort
        self._begun = time.monotonic()
        if self.transactional:
            self._faults.check("begin")

    def _produce_all(self, records: Iterable) -> None:
        produce, poll, on_delivery = self._producer.produce, self._producer.poll, self._on_delivery_cb
        for r in records:
            while True:
                try:
                    if r.partition is None:
                        produce(r.topic, r.value, r.key, on_delivery=on_delivery)
                    else:
                        produce(r.topic, r.value, r.key, partition=r.partition, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka send, then retry
                    poll(0.05)

    def produce(self, records: list, step: str = "step") -> None:
        """Records into the open transaction (begun here if none is open) — at_least_once, into the
        queue the next ``write`` waits out. Nothing produced counts as written before that commit or
        write; a failure aborts the whole open transaction."""
        try:
            if not self.open:
                self._begin()
            self._produce_all(records)
            self._producer.poll(0)  # serve delivery callbacks as the interval goes, not all at its end
            self._faults.check(step)
        except KafkaException as exc:
            raise self._failed(exc, "transaction" if self.transactional else "produce") from None

    def transaction(self, records: list, offsets: list[TopicPartition], group_metadata) -> None:  # noqa: ANN001
        """The interval's last records and the input offsets, then commit: everything produced since
        the last commit and these offsets, all or nothing."""
        if not (self.open or records or offsets):
            return
        try:
            t0 = time.perf_counter()
            if not self.open:
                self._begin()
            self._produce_all(records)
            self._faults.check("produce")
            t1 = time.perf_counter()
            if offsets:
                self._send_offsets(offsets, group_metadata)
            self._faults.check("offsets")
            self._faults.check("commit")
            t2 = time.perf_counter()
            self._commit()
            self.open = False
            self.phases = (t1 - t0, t2 - t1, time.perf_counter() - t2)
        except KafkaException as exc:
            raise self._failed(exc, "transaction") from None
        if self._errors:  # cannot happen after a successful commit; kept as a guard
            raise EmitError("delivery failed: " + "; ".join(self._errors[:5]))

    def _send_offsets(self, offsets: list[TopicPartition], group_metadata) -> None:  # noqa: ANN001
        """``send_offsets_to_transaction`` with a bound that holds. librdkafka waits for the answer
        without one and leaves the timeout to the request it sends to the group coordinator — which
        does not enforce it (librdkafka issues 5456 and 5511, open in 2.16: after a broker restart
        the call never returned; py-spy: ``pthread_cond_wait`` in ``rd_kafka_txn_op_req0``, the
        worker deaf to SIGTERM, its partitions held — issue 13). It runs on a helper thread while
        this one waits its timeout + ``SEND_OFFSETS_SLACK_S``; past that the call is still in progress
        inside librdkafka, so this producer can take no other transactional call: fatal (the worker
        exits 3 and its supervisor restarts it; the new producer fences this one's transaction)."""
        done = threading.Event()
        raised: list[BaseException] = []
        timeout = min(self._timeout, SEND_OFFSETS_TIMEOUT_S)

        def send() -> None:
            try:
                self._producer.send_offsets_to_transaction(offsets, group_metadata, timeout)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                raised.append(exc)
            finally:
                done.set()

        threading.Thread(target=send, name="send-offsets", daemon=True).start()
        if not done.wait(timeout + SEND_OFFSETS_SLACK_S):
            self.wedged = True
            raise EmitError(
                f"send_offsets_to_transaction did not return within {timeout + SEND_OFFSETS_SLACK_S:.0f} s "
                "(librdkafka ignores its timeout when the group coordinator is gone)",
                fatal=True,
            )
        if raised:
            raise raised[0]

    def _commit(self, patience_s: float = 300.0) -> None:
        """``commit_transaction``, called again while it times out: librdkafka resumes a timed-out
        commit when it is called again, and refuses an abort meanwhile (``_CONFLICT``: seen as 300 s
        of abort retries, then exit 3, after a commit timed out across a broker restart). An error
        that requires an abort, a fatal one, or a timeout past ``patience_s`` is raised."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self._producer.commit_transaction(self._timeout)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or err.txn_requires_abort() or err.fatal() or time.monotonic() > deadline:
                    raise
                log.warning("commit_transaction: %s; calling it again", err)

    def _failed(self, exc: KafkaException, what: str) -> EmitError:
        err: KafkaError = exc.args[0]
        fatal = err.fatal() or err.code() in FENCED
        if self.transactional and self.open:
            # a fatal error: the coordinator's timeout (a new producer took over: go on) or the end
            fatal = not self._taken_over(err) if fatal else not self._abort()
        elif fatal:
            self.fatal = True
        self.open = False
        return EmitError(f"{what} failed: {err}", fatal=fatal)

    def abort(self) -> None:
        """Drop the open transaction (exactly_once; at_least_once: nothing can be taken back, the
        queue is only forgotten as an interval). Raises a fatal ``EmitError`` when it cannot."""
        if self.transactional and self.open and not self._abort():
            self.open = False
            raise EmitError("the open transaction cannot be aborted", fatal=True)
        self.open = False

    def _abort(self, patience_s: float = 300.0) -> bool:
        """Abort the open transaction, retrying while the broker is away (a restart takes tens of
        seconds; librdkafka allows a timed-out abort to be called again). False when it cannot be
        aborted — a fatal error, or still failing after ``patience_s`` (seen: a zombie resumed after
        SIGSTOP): this producer's state is then unknown and the worker exits for its supervisor.
        True, too, when the coordinator had aborted it already for running past its timeout and a
        new producer took over (``_taken_over``)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self._producer.abort_transaction(30)
                return True
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() or err.code() in FENCED:
                    return self._taken_over(err)
                if time.monotonic() > deadline:
                    log.error("cannot abort the transaction: %s", err)
                    self.fatal = True
                    return False
                log.warning("abort_transaction: %s; retrying", err)
                time.sleep(1.0)

    def _taken_over(self, err: KafkaError) -> bool:
        """After a fatal error of the open transaction: True when the coordinator had timed it out
        (fenced, open at least ``transaction.timeout.ms``) and a new producer now holds the
        transactional id; False when this is the end — fenced by a newer instance (open less
        than the timeout: no coordinator aborted it), another fatal error, or no new producer."""
        self.fatal = True
        age = time.monotonic() - self._begun
        if err.code() not in FENCED or age < self._transaction_timeout_s:
            log.error("the open transaction failed for good: %s", err)
            return False
        log.warning(
            "the transaction coordinator aborted this worker's transaction after %.1f s open (transaction "
            "timeout %.0f s) and fenced its producer (%s); a new producer takes over the transactional id",
            age,
            self._transaction_timeout_s,
            err,
        )
        try:
            self._replace()
        except KafkaException as exc:
            log.error("no new producer: %s", exc.args[0])
            return False
        metrics.PRODUCERS_REPLACED.inc()
        return True

    def _replace(self) -> None:
        """A new producer with the same settings and transactional id in place of the fenced one.
        The old one is dropped without a flush (see the module doc): it can write nothing more, and
        what it held belonged to the aborted transaction."""
        self._producer = Producer(self._conf)  # the old one is destroyed with its last reference
        self._init_transactions()  # bumps the epoch past the coordinator's (KIP-360)
        self.fatal = False
        self.open = False

    def write(self, records: list) -> None:
        """at_least_once: these records and every one produced since the last ``write`` acknowledged,
        or ``EmitError``."""
        if not self.open:
            self._begin()
        self.open = False
        self._produce_all(records)
        remaining = self._producer.flush(self._timeout)
        self._faults.check("write")
        if remaining:
            raise EmitError(f"{remaining} records not acknowledged within {self._timeout:.0f} s")
        if self._errors:
            raise EmitError("delivery failed: " + "; ".join(self._errors[:5]))

    def close(self) -> None:
        if self.wedged:  # a call still in progress holds it: nothing of its transaction can be kept
            return
        if self.fatal:  # nothing more can be written, and serving its queue fails (module doc)
            log.info("output producer: not flushed on close (it had a fatal error; nothing committed is affected)")
            return
        try:
            self._producer.flush(10)
        except KafkaException as exc:  # e.g. INVALID_TXN_STATE after a fenced or failed transaction:
            # nothing uncommitted is lost by leaving (it is reread), so stopping must not fail on it
            log.warning("output producer: %s while closing (nothing committed is affected)", exc.args[0])
