"""Keep a fixed share of traces, consistently: the choice comes from the trace's randomness
(OTEP 235: ``ot=rv:`` or the trace ID's low 56 bits), so every worker and every replay agrees, and
lower rates keep subsets of higher ones. With ``hash_salt`` the randomness is a salted hash of
the trace ID instead: still deterministic per trace, but independent of (not nested with)
unsalted samplers."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators import randomness
from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass
class ProbabilisticPolicy(Policy):
    name: str
    sampling_percentage: float
    hash_salt: str = ""
    _threshold: int = field(init=False, repr=False)
    _reason: str = field(init=False, repr=False)
    # the two answers (drawn keep / drawn drop), built once: verdicts are immutable
    _verdicts: tuple[Verdict, Verdict] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._threshold = randomness.threshold(self.sampling_percentage / 100.0)
        self._reason = f"probabilistic:{self.sampling_percentage:g}%"
        source = "salt:" + self.hash_salt if self.hash_salt else ""
        self._verdicts = tuple(  # type: ignore[assignment]
            Verdict(Action.KEEP, self._reason, self.probability, sampled, source) for sampled in (False, True)
        )

    @property
    def probability(self) -> float:
        return self.sampling_percentage / 100.0

    def evaluate(self, trace: TraceView) -> Verdict | None:
        if self.hash_salt:
            r = randomness.salted_randomness(trace.trace_id, self.hash_salt)
        else:
            r = trace.randomness
        return self._verdicts[r >= self._threshold]
