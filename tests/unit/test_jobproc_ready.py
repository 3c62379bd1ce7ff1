"""``JobProcess.wait_ready(members=N)``: the bench times several workers only once every one of them
holds partitions.

Before: ready meant "the group is Stable and some member holds partitions" — with two workers
starting, the first one alone holding all six partitions passed, so the second's join (a
rebalance: revoke commit, restore, replay) fell inside the bench's timed drain; the two-worker
figure read 0.56× one worker on a run where the job's CPU per span did not change."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import ConsumerGroupState

from pipeline import jobproc


class Future:
    def __init__(self, value) -> None:  # noqa: ANN001
        self.value = value

    def result(self, timeout=None):  # noqa: ANN001
        return self.value


def member(partitions: int) -> SimpleNamespace:
    return SimpleNamespace(assignment=SimpleNamespace(topic_partitions=list(range(partitions))))


def groups(*states: list) -> type:
    """An AdminClient whose group description goes through ``states`` (lists of members), one per call."""
    seen = iter(states)

    class Admin:
        def __init__(self, conf) -> None:  # noqa: ANN001
            pass

        def describe_consumer_groups(self, names):  # noqa: ANN001
            members = next(seen)
            return {names[0]: Future(SimpleNamespace(state=ConsumerGroupState.STABLE, members=members))}

    return Admin


def job(monkeypatch, admin: type) -> tuple[jobproc.JobProcess, list]:
    monkeypatch.setattr(jobproc, "AdminClient", admin)
    sleeps: list = []
    monkeypatch.setattr(jobproc.time, "sleep", sleeps.append)
    p = jobproc.JobProcess("unused.yaml", 1, "unused.log")
    monkeypatch.setattr(p, "_check_alive", lambda: None)
    monkeypatch.setattr(p, "metrics", lambda: {})
    return p, sleeps


def test_two_workers_are_ready_only_when_both_hold_partitions(monkeypatch):
    p, sleeps = job(monkeypatch, groups([member(6)], [member(6), member(0)], [member(3), member(3)]))
    p.wait_ready("bootstrap", "group", members=2)
    assert len(sleeps) == 2  # the first two descriptions (one member holding all six) were not enough


def test_one_worker_is_ready_as_soon_as_it_holds_partitions(monkeypatch):
    p, sleeps = job(monkeypatch, groups([member(0)], [member(6)]))
    p.wait_ready("bootstrap", "group")
    assert len(sleeps) == 1
