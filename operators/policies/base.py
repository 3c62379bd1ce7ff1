"""The one interface every sampling policy implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from operators.trace import TraceView


class Action(enum.Enum):
    KEEP = "keep"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy's answer when it matches. ``probability`` is the chance that a trace like this one
    is kept by this policy (1 for deterministic rules); the adjusted count is its inverse."""

    action: Action
    reason: str
    probability: float = 1.0


class Policy(Protocol):
    name: str

    def evaluate(self, trace: TraceView) -> Verdict | None:
        """A verdict when the policy matches the trace, else None (no opinion)."""
        ...
