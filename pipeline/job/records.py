"""What goes in and out of the job core: a received message, an output record with the input
``Hold``s it discharges, and the outbox one ``collect`` hands to the data plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.commit import Hold

# librdkafka's producer limit (message.max.bytes) less headroom for the record batch framing and key
MAX_RECORD_BYTES = 1_000_000 - 4_096


@dataclass(slots=True)
class Received:
    """One Kafka message as the job sees it; ``ref`` is whatever the caller acks later;
    ``timestamp_ms`` its Kafka timestamp (-1: none; the backlog guard of ``operators.assemble``)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ref: Any = None
    timestamp_ms: int = -1


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    holds: list[Hold] = field(default_factory=list)
    partition: int | None = None  # None: by key (murmur2, as every Kafka client); set for the decision log


@dataclass(slots=True)
class Outbox:
    records: list[Record] = field(default_factory=list)
    kept_traces: int = 0
    dropped_traces: int = 0
    decision_points: list[int] = field(default_factory=list)  # when each decided trace became due (ns)
    # exactly_once: partition → highest input offset whose side outputs (SLI partials, dead letters,
    # re-keyed copies) are in ``records``; committed as offset metadata (pipeline.kafka.checkpoint)
    checkpoints: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)
