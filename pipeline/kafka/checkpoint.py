"""What a committed input offset says beyond its position: the commit metadata of each partition.

The committed offset is a *low watermark*: the oldest message whose trace is still buffered (its
decision is not written yet) — so a crash loses no span. Messages after it have already had their
side outputs written (SLI partials, dead letters, re-keyed copies) in earlier transactions; on a
replay they must not be counted again. The metadata committed with the offset, in the same
transaction (``send_offsets_to_transaction``), says how far that goes and where the decision log
must be read back from:

    {"v": 1, "through": <highest offset whose side outputs are written>,
     "since_ms": <worker-clock ms when the oldest uncommitted message was read>,
     "read_ms": <the partition's read time: every message stamped up to it (Kafka time) is read,
                 its re-keyed copies written — absent when unknown>,
     "rekeyed_ms": <worker-clock ms when a message read from it was last re-keyed — absent: never>}

``read_ms`` is what the other workers of the group wait for before deciding a trace whose spans
may arrive as re-keyed copies from this partition (``pipeline.kafka.read_times``): it commits with
the copies, so a reader that sees it can find them. Older readers ignore it; a checkpoint without
it decodes with ``read_ms`` -1. ``rekeyed_ms`` says whether waiting for that read time is worth it
(``assemble.group_read_time: auto``): only a partition whose reader re-keys can hold copies for
another one; it commits with those copies too, so a reader that sees a copy's commit sees it.

Offset and metadata commit atomically with the outputs, so they can never disagree, and restoring
needs neither a scan of the decision log nor a producer's clock (``since_ms`` is this job's own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    through: int = -1  # side outputs of offsets ≤ through are written
    since_ms: int = 0  # restore decisions written from since_ms − assemble.decision_restore_ms on
    read_ms: int = -1  # read (and re-keyed) up to this Kafka time; -1: unknown
    rekeyed_ms: int = -1  # a message read here was last re-keyed then (worker clock); -1: never

    def encode(self) -> str:
        d = {"v": VERSION, "through": self.through, "since_ms": self.since_ms}
        if self.read_ms >= 0:
            d["read_ms"] = self.read_ms
        if self.rekeyed_ms >= 0:
            d["rekeyed_ms"] = self.rekeyed_ms
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def decode(cls, metadata: str | None) -> Checkpoint | None:
        """None when absent or not ours (a commit by another tool, or an older tailsift)."""
        if not metadata:
            return None
        try:
            d = json.loads(metadata)
            if d.get("v") != VERSION:
                return None
            return cls(int(d["through"]), int(d["since_ms"]), int(d.get("read_ms", -1)), int(d.get("rekeyed_ms", -1)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
