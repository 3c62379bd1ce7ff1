"""Keep a fixed share of traces, consistently: the choice comes from the trace ID's randomness
(OTEP 235), so every worker and every replay agrees, and lower rates keep subsets of higher ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators import randomness
from operators.policies.base import Action, Verdict
from operators.trace import TraceView


@dataclass
class ProbabilisticPolicy:
    name: str
    sampling_percentage: float
    _threshold: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._threshold = randomness.threshold(self.sampling_percentage / 100.0)

    @property
    def probability(self) -> float:
        return self.sampling_percentage / 100.0

    def evaluate(self, trace: TraceView) -> Verdict | None:
        if randomness.is_kept(trace.trace_id, self._threshold):
            return Verdict(Action.KEEP, f"probabilistic:{self.sampling_percentage:g}%", self.probability)
        return None
