"""One factory for the job core in unit tests: a test config, a ``Job``, input messages, and the
records of an outbox. Test modules pass only what they test (``sampling=…``, ``job=…``)."""

from __future__ import annotations

from typing import Any

from pipeline import config
from pipeline.codecs import avro
from pipeline.job import Job, Outbox, Received, Record
from tests.spans import batch_bytes

MS = 1_000_000
S = 1_000_000_000

# What the job-core tests share: the core alone (protection has its own tests, which turn it on),
# a 1 s decision wait, and 10 s SLI windows emitted as soon as they end.
BASE: dict[str, dict[str, Any]] = {
    "privacy": {"enabled": False},
    "assemble": {"decision_wait_ms": 1000},
    "sli": {"window_seconds": 10, "grace_seconds": 0},
}


def make_config(**sections: dict[str, Any] | None) -> config.Config:
    """``BASE`` with each given section's keys laid over it (``None`` or ``{}`` adds nothing)."""
    data: dict[str, dict[str, Any]] = {name: dict(values) for name, values in BASE.items()}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **(values or {})}
    return config.parse(data, "<test config>")


def make_job(worker_id: str = "test", protector: Any = None, **sections: dict[str, Any] | None) -> Job:
    return Job(make_config(**sections), worker_id=worker_id, protector=protector)


def received(
    offset: int,
    trace_id: bytes,
    service: str,
    spans: list[dict],
    partition: int = 0,
    key: bytes | None = None,
    attributes: dict | None = None,
    links: list[bytes] | None = None,
) -> Received:
    """An Avro ``SpanBatch`` message at ``offset``, keyed by its trace ID unless ``key`` is given;
    its ``ref`` (what the job hands back as ready) is the offset."""
    value = batch_bytes(trace_id, service, spans, attributes, links)
    return Received(partition, offset, trace_id if key is None else key, value, ref=offset)


def records(outbox: Outbox, topic: str) -> list[Record]:
    return [r for r in outbox.records if r.topic == topic]


def kept_traces(outbox: Outbox, topic: str = "traces.kept") -> dict[bytes, dict]:
    """The decoded ``KeptTrace`` records of an outbox by key (the last one per trace)."""
    return {r.key: avro.decode(avro.KEPT_TRACE, r.value) for r in records(outbox, topic) if r.key is not None}
