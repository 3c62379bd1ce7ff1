"""The group read-time exchange across a broker killed and started again (issue 13): the process
polling it lives through two restarts and reads the group's new read times after each.

Before: the exchange asked the AdminClient (``list_consumer_group_offsets``, ``list_offsets``)
every 250 ms. Requests that timed out while the broker was away left librdkafka's coordinator
requests behind, and when the broker came back one of them freed and then reread their shared
state: the process aborted (``rd_kafka_enq_once_del_source_return: Assertion `eonce->refcnt > 0'
failed``, exit -6) — the worker that died in ``test_broker_restart.py`` in CI, and a standalone
loop of those calls at its second restart. Whether the read of freed memory trips the assertion
depends on the allocator; in this test's two runs on the old code the probe lived, but read no
group read time after the first restart: its end offsets failed ``FENCED_LEADER_EPOCH`` for good
(``read_after == [False, False]``). ``pipeline.kafka.group_snapshot`` has the librdkafka details."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.chaos.fleet import Broker
from pipeline.kafka import clients
from pipeline.kafka.checkpoint import Checkpoint
from tests.integration.test_assembly_e2e import make_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MS = 1_000_000
# the probe's request timeout: the outage outlasts it several times over within seconds
REQUEST_TIMEOUT_S = 1.0
# failed requests to see while the broker is away before it is started again
FAILURES_WHILE_AWAY = 3


def commit_read_times(cfg, read_ms: dict[int, int], timeout: float = 240.0) -> None:  # noqa: ANN001
    """Commit, as the workers of the group would, a checkpoint with a read time per partition (the
    broker may still be loading its group coordinator after the restart: asked again until then)."""
    topic = cfg.topics.spans_raw.name
    offsets = [TopicPartition(topic, p, 0, metadata=Checkpoint(-1, 0, t, -1).encode()) for p, t in read_ms.items()]
    consumer = Consumer({**clients.base(cfg), "group.id": cfg.kafka.group_id, "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


class Probe:
    """``tests.support.read_times_probe`` in a process of its own: an abort must not end pytest."""

    def __init__(self, config_path: Path, log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.read_times_probe", str(config_path), str(REQUEST_TIMEOUT_S)],
            cwd=REPO,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond, what: str, timeout: float) -> None:  # noqa: ANN001
        if not self.seen(cond, timeout):
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.output()[-3000:]}")

    def seen(self, cond, timeout: float) -> bool:  # noqa: ANN001
        """Whether ``cond(output)`` came true within ``timeout``; the probe dying fails the test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the probe died (exit {self.proc.returncode}):\n{self.output()[-3000:]}")
            if cond(self.output()):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def test_the_group_read_time_exchange_lives_through_broker_restarts(local_kafka, unique_name, tmp_path):
    """Two restarts: the old exchange's leftover coordinator requests often fired only at the second
    (after the first its requests stalled — no broker state change came to move them — and its end
    offsets failed FENCED_LEADER_EPOCH for good); by then the probe had died (exit -6)."""
    if local_kafka.instance_dir is None:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS is an external cluster: this test cannot restart it")
    path, cfg = make_env(local_kafka.bootstrap, f"rtr-{unique_name}", tmp_path, assemble={"group_read_time": True})
    partitions = cfg.topics.spans_raw.partitions
    broker = Broker(local_kafka.bootstrap, local_kafka.instance_dir)
    # partition 0's group read time: the lowest of every other partition's (partition 1's)
    commit_read_times(cfg, {p: 1_000 * (p + 1) for p in range(partitions)})
    probe = Probe(path, tmp_path / "probe.log")
    try:
        probe.wait_for(lambda out: f"floor {2_000 * MS}\n" in out, "the group read time before the restarts", 120)
        read_after: list[bool] = []
        for step in (10_000, 100_000):
            failed_before = probe.output().count("unavailable")
            broker.stop(kill=True)
            try:
                probe.wait_for(
                    lambda out, n=failed_before: out.count("unavailable") >= n + FAILURES_WHILE_AWAY,
                    "requests failing while the broker is away",
                    120,
                )
            finally:
                broker.start()
            commit_read_times(cfg, {p: step * (p + 1) for p in range(partitions)})
            # not reached in time: the next restart still runs (the old exchange died there)
            read_after.append(probe.seen(lambda out, want=2 * step * MS: f"floor {want}\n" in out, 180))
        assert read_after == [True, True], probe.output()[-3000:]
        assert probe.proc.poll() is None
    finally:
        probe.stop()
