"""pipeline.kafka.producer.OutputProducer's transaction against librdkafka's rules, with the
confluent-kafka Producer replaced by a fake that answers as librdkafka does."""

from __future__ import annotations

import itertools
import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.kafka import producer as producer_mod


def timed_out() -> KafkaException:
    return KafkaException(
        KafkaError(
            KafkaError._TIMED_OUT, "Timed out waiting for operation to finish, retry call to resume", retriable=True
        )
    )


class FakeProducer:
    def __init__(self, commit_failures: list[KafkaException]):
        self.commit_failures = commit_failures
        self.calls: list[str] = []
        self.committing = False

    def init_transactions(self, timeout) -> None:  # noqa: ANN001
        pass

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic, value, key, **kw) -> None:  # noqa: ANN001
        self.calls.append("produce")

    def poll(self, timeout) -> int:  # noqa: ANN001
        return 0

    def send_offsets_to_transaction(self, offsets, group_metadata, timeout) -> None:  # noqa: ANN001
        self.calls.append("offsets")

    def commit_transaction(self, timeout) -> None:  # noqa: ANN001
        self.calls.append("commit")
        self.committing = True  # librdkafka: the commit goes on until called again or done
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.committing = False

    def abort_transaction(self, timeout) -> None:  # noqa: ANN001
        self.calls.append("abort")
        if self.committing:
            raise KafkaException(
                KafkaError(KafkaError._CONFLICT, "Conflicting commit_transaction API call is already in progress")
            )


def output_producer(monkeypatch, fake: FakeProducer, transactional: bool = True) -> producer_mod.OutputProducer:
    monkeypatch.setattr(producer_mod, "Producer", lambda conf: fake)
    monkeypatch.setattr(producer_mod.time, "sleep", lambda s: None)
    clock = itertools.count(0, 10)  # every look at the clock: 10 s later
    monkeypatch.setattr(producer_mod.time, "monotonic", lambda: next(clock))
    conf = {"bootstrap.servers": "unused", **({"transactional.id": "t"} if transactional else {})}
    return producer_mod.OutputProducer(conf)


def test_a_commit_that_timed_out_is_called_again_not_aborted(monkeypatch):
    """Before: a commit_transaction that timed out (a broker restart under way) was followed by
    abort_transaction, which librdkafka refuses while that commit is in progress (_CONFLICT); the
    abort was retried for 300 s, then the worker exited 3 — a worker making no progress for five
    minutes after the broker was back."""
    fake = FakeProducer(commit_failures=[timed_out(), timed_out()])
    p = output_producer(monkeypatch, fake)
    p.transaction([], [TopicPartition("t", 0, 5)], object())
    assert fake.calls == ["begin", "offsets", "commit", "commit", "commit"]


def test_a_commit_that_requires_an_abort_is_aborted(monkeypatch):
    err = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "skipped sequence numbers", txn_requires_abort=True)
    fake = FakeProducer(commit_failures=[KafkaException(err)])
    fake_abort = fake.abort_transaction

    def abort(timeout) -> None:  # noqa: ANN001 - an abortable error ends the commit
        fake.committing = False
        fake_abort(timeout)

    fake.abort_transaction = abort
    p = output_producer(monkeypatch, fake)
    with pytest.raises(producer_mod.EmitError) as raised:
        p.transaction([], [TopicPartition("t", 0, 5)], object())
    assert not raised.value.fatal  # the worker rewinds and goes on
    assert fake.calls == ["begin", "offsets", "commit", "abort"]


def test_a_commit_timing_out_past_its_patience_is_given_up(monkeypatch):
    fake = FakeProducer(commit_failures=[timed_out() for _ in range(100)])
    p = output_producer(monkeypatch, fake)
    with pytest.raises(producer_mod.EmitError):
        p.transaction([], [TopicPartition("t", 0, 5)], object())
    assert fake.calls.count("commit") < 100  # bounded by the patience, not by the failures


def test_init_transactions_that_times_out_is_called_again(monkeypatch):
    """Before: a worker started while the broker restarted exited 1 with a traceback when
    init_transactions timed out after 30 s (the transaction coordinator still loading)."""
    fake = FakeProducer(commit_failures=[])
    inits = [timed_out(), timed_out()]

    def init_transactions(timeout) -> None:  # noqa: ANN001
        fake.calls.append("init")
        if inits:
            raise inits.pop(0)

    fake.init_transactions = init_transactions
    output_producer(monkeypatch, fake, transactional=True)
    assert fake.calls == ["init", "init", "init"]


def test_init_transactions_fenced_is_raised_at_once(monkeypatch):
    fake = FakeProducer(commit_failures=[])
    fenced = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    fake.init_transactions = lambda timeout: (_ for _ in ()).throw(fenced)
    with pytest.raises(KafkaException):
        output_producer(monkeypatch, fake, transactional=True)


def test_send_offsets_that_never_returns_is_fatal_instead_of_a_hang(monkeypatch):
    """Before: send_offsets_to_transaction(offsets, metadata, 60) did not return, ever, after a
    broker restart (librdkafka 2.16 does not enforce that timeout when the group coordinator it
    cached is gone: issues 5456, 5511). py-spy on the hung worker: pthread_cond_wait in
    rd_kafka_txn_op_req0 under rd_kafka_send_offsets_to_transaction — its partitions held, its
    lag unchanged, SIGTERM unheard (issue 13)."""
    never = threading.Event()
    fake = FakeProducer(commit_failures=[])
    fake.flushed = False

    def send_offsets(offsets, group_metadata, timeout) -> None:  # noqa: ANN001
        fake.calls.append("offsets")
        never.wait()

    def flush(timeout) -> int:  # noqa: ANN001
        fake.flushed = True
        return 0

    fake.send_offsets_to_transaction = send_offsets
    fake.flush = flush
    monkeypatch.setattr(producer_mod, "Producer", lambda conf: fake)
    monkeypatch.setattr(producer_mod, "SEND_OFFSETS_SLACK_S", 0.1)
    p = producer_mod.OutputProducer({"bootstrap.servers": "unused", "transactional.id": "t"}, commit_timeout_s=0.1)
    outcome: dict = {}

    def write() -> None:
        try:
            p.transaction([], [TopicPartition("t", 0, 5)], object())
        except producer_mod.EmitError as exc:
            outcome["error"] = exc

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        writer.join(60)
        assert not writer.is_alive(), "transaction() is still waiting for send_offsets_to_transaction"
    finally:
        never.set()
    assert outcome["error"].fatal  # the worker exits 3 for its supervisor
    assert fake.calls == ["begin", "offsets"]  # no commit, no abort on a producer with a call in progress
    p.close()
    assert not fake.flushed


# ------------------------------------------------ a transaction the coordinator timed out (issue 11)
def fenced() -> KafkaException:
    """What librdkafka raises both after a newer instance's init_transactions and after the
    coordinator timed the open transaction out (seen on Kafka 4.1.2: the same code and text)."""
    return KafkaException(
        KafkaError(
            KafkaError._FENCED,
            "Failed to add offsets to transaction: Local: This instance has been fenced by a newer instance",
            fatal=True,
        )
    )


class FencedProducer(FakeProducer):
    """A producer whose next send_offsets_to_transaction (and abort) is fenced; delivery callbacks
    and flushes recorded."""

    def __init__(self, conf: dict):
        super().__init__(commit_failures=[])
        self.conf = conf
        self.fence = True
        self.callbacks: list = []
        self.flushed = False

    def init_transactions(self, timeout) -> None:  # noqa: ANN001
        self.calls.append("init")

    def produce(self, topic, value, key, **kw) -> None:  # noqa: ANN001
        self.calls.append("produce")
        self.callbacks.append(kw.get("on_delivery"))

    def send_offsets_to_transaction(self, offsets, group_metadata, timeout) -> None:  # noqa: ANN001
        self.calls.append("offsets")
        if self.fence:
            raise fenced()

    def abort_transaction(self, timeout) -> None:  # noqa: ANN001
        self.calls.append("abort")
        if self.fence:
            raise fenced()

    def flush(self, timeout) -> int:  # noqa: ANN001
        self.flushed = True
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fencing_producer(monkeypatch, timeout_ms: int = 10_000):
    made: list[FencedProducer] = []

    def make(conf: dict) -> FencedProducer:
        made.append(FencedProducer(conf))
        if len(made) > 1:
            made[-1].fence = False  # the new producer holds the id now
        return made[-1]

    clock = Clock()
    monkeypatch.setattr(producer_mod, "Producer", make)
    monkeypatch.setattr(producer_mod.time, "monotonic", clock)
    conf = {"bootstrap.servers": "unused", "transactional.id": "tailsift.g.w1", "transaction.timeout.ms": timeout_ms}
    return producer_mod.OutputProducer(conf), made, clock


def record():
    from pipeline.job import Record

    return Record("traces.kept", b"k", b"v")


def test_a_transaction_fenced_past_its_timeout_goes_on_with_a_new_producer(monkeypatch):
    """The coordinator aborts a transaction left open past transaction.timeout.ms and bumps the
    producer epoch; librdkafka reports the next call as fatal _FENCED. Before: fatal, the worker
    exited 3 (CI: the survivor of test_a_worker_leaves_a_two_worker_group_mid_stream[kill], its
    transaction open ~21 s across a restore) — now a new producer with the same settings and
    transactional id takes over, the error is not fatal (the worker rewinds), and the next
    transaction goes through the new producer."""
    p, made, clock = fencing_producer(monkeypatch)
    replaced = producer_mod.metrics.PRODUCERS_REPLACED._value.get()
    p.produce([record()])
    clock.now += 10.0  # open as long as the timeout: the coordinator may have aborted it
    with pytest.raises(producer_mod.EmitError) as raised:
        p.transaction([], [TopicPartition("t", 0, 5)], object())
    assert not raised.value.fatal and not p.open and not p.fatal
    assert len(made) == 2 and made[1].conf == made[0].conf and made[1].calls == ["init"]
    assert "abort" not in made[0].calls  # the coordinator aborted it; the fenced producer is left alone
    assert producer_mod.metrics.PRODUCERS_REPLACED._value.get() - replaced == 1
    p.transaction([record()], [TopicPartition("t", 0, 5)], object())
    assert made[1].calls == ["init", "begin", "produce", "offsets", "commit"]


def test_a_transaction_fenced_before_its_timeout_stays_fatal(monkeypatch):
    """A transaction open less than the timeout cannot have been timed out: the fence is a newer
    instance's with the same transactional id (a zombie's new self) — the worker must exit and
    never write again; no new producer takes the id back."""
    p, made, clock = fencing_producer(monkeypatch)
    p.produce([record()])
    clock.now += 9.9
    with pytest.raises(producer_mod.EmitError) as raised:
        p.transaction([], [TopicPartition("t", 0, 5)], object())
    assert raised.value.fatal and p.fatal
    assert len(made) == 1


def test_an_abort_fenced_past_the_timeout_goes_on_with_a_new_producer(monkeypatch):
    """Partitions lost: the worker aborts the open transaction before rewinding. When the
    coordinator had timed it out, that abort is fenced too — before: a fatal EmitError, exit 3."""
    p, made, clock = fencing_producer(monkeypatch)
    p.produce([record()])
    clock.now += 30.0
    p.abort()  # does not raise
    assert len(made) == 2 and not p.open


def test_the_transactional_producer_has_no_delivery_callback_and_a_fatal_one_is_not_flushed(monkeypatch):
    """Before: close() after a fence flushed the fatal producer; confluent-kafka 2.16.1 leaves the
    fatal error its error callback raises pending while it serves the rest of the queue, so the
    next delivery callback (formatting a KafkaError) failed: ``SystemError: __format__ of
    KafkaError returned a result with an exception set`` on the way out (reproduced against the
    broker: tests/integration/test_producer_fencing.py)."""
    p, made, clock = fencing_producer(monkeypatch)
    p.produce([record()])
    assert made[0].callbacks == [None]
    clock.now += 1.0
    with pytest.raises(producer_mod.EmitError):
        p.transaction([], [TopicPartition("t", 0, 5)], object())
    p.close()
    assert not made[0].flushed


def test_the_at_least_once_producer_keeps_its_delivery_callback(monkeypatch):
    fake = FencedProducer({})
    monkeypatch.setattr(producer_mod, "Producer", lambda conf: fake)
    p = producer_mod.OutputProducer({"bootstrap.servers": "unused"})
    p.produce([record()])
    assert fake.callbacks == [p._on_delivery]
