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
class Consumed:
    """A consumed batch as columns, one entry per message — what the data plane hands the job
    without building an object per message (``Received`` is the one-message view of it, built
    only where a message is dead-lettered or re-keyed). ``refs``: what the caller acks later."""

    partitions: list[int]
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps_ms: list[int]
    refs: list[Any]

    @classmethod
    def of(cls, messages: list[Received]) -> Consumed:
        return cls(
            [m.partition for m in messages],
            [m.offset for m in messages],
            [m.key for m in messages],
            [m.value for m in messages],
            [m.timestamp_ms for m in messages],
            [m.ref for m in messages],
        )

    def __len__(self) -> int:
        return len(self.values)

    def message(self, i: int) -> Received:
        return Received(
            self.partitions[i], self.offsets[i], self.keys[i], self.values[i], self.refs[i], self.timestamps_ms[i]
        )


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
