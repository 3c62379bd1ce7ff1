"""clients.max_record_bytes while the broker is away: asked again, not a crash at startup.

Before: a worker started during a broker restart exited 1 with a traceback (the DescribeConfigs
future's TimeoutError was not even a KafkaException its caller handles)."""

from __future__ import annotations

import concurrent.futures
import itertools
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.kafka import clients
from tests.support.jobs import make_config


class FakeAdmin:
    def __init__(self, answers: list):
        self.answers = answers  # per call: an exception to raise from the futures, or a limit

    def describe_configs(self, resources, request_timeout):  # noqa: ANN001
        answer = self.answers.pop(0)
        futures = {}
        for r in resources:
            f: concurrent.futures.Future = concurrent.futures.Future()
            if isinstance(answer, BaseException):
                f.set_exception(answer)
            else:
                f.set_result({"max.message.bytes": SimpleNamespace(value=str(answer))})
            futures[r] = f
        return futures


def with_admin(monkeypatch, answers: list) -> None:
    import confluent_kafka.admin

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", lambda conf: FakeAdmin(answers))
    clock = itertools.count(0, 10)
    monkeypatch.setattr(clients.time, "monotonic", lambda: next(clock))


def test_timeouts_while_the_broker_is_away_are_asked_again(monkeypatch):
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed while waiting for response"))
    with_admin(monkeypatch, [TimeoutError(), timed_out, 500_000])
    assert clients.max_record_bytes(make_config()) == 500_000 - 4_096


def test_a_refusal_is_raised_at_once(monkeypatch):
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not allowed"))
    with_admin(monkeypatch, [denied, 500_000])
    with pytest.raises(KafkaException):
        clients.max_record_bytes(make_config())


def test_a_broker_away_past_the_patience_is_raised(monkeypatch):
    with_admin(monkeypatch, [TimeoutError()] * 100)
    with pytest.raises(TimeoutError):
        clients.max_record_bytes(make_config(), patience_s=60)
