"""The one interface every sampling policy implements, and the consistent draw they share.

A policy answers ``evaluate(trace)`` with ``None`` (it does not apply to this trace: no opinion)
or a ``Verdict``:

- ``Verdict(DROP, reason)``: drop the trace (drop wins over every keep, see ``decide``).
- ``Verdict(KEEP, reason, probability, sampled, source)``: the policy applies and keeps a trace
  like this one with ``probability``; ``sampled`` says whether *this* trace's draw came out keep.
  A probabilistic policy that applies but did not pick the trace still answers (``sampled=False``)
  so the engine can compute the trace's true keep probability when several policies apply.
  ``source`` names the randomness the draw used: ``""`` is the trace's own OTEP 235 randomness R
  (draws on R nest: the union of "R ≥ T_i" is "R ≥ min T_i"); any other value is an independent
  source (a hash salt), combined as independent events. A combinator whose keep needs draws on
  several sources (``and``, ``composite``) lists them in ``draws`` ((source, p) pairs, all must
  keep) so the engine can compute π exactly (see ``operators.keep_probability``).

Time-dependent policies read the decision time from ``trace.now_ns`` — never a clock.

Every policy class subclasses ``Policy`` explicitly, so the two optional parts of the contract have
their defaults in one place: ``can_drop`` and ``guard_drops`` (see the protocol).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol

from operators import randomness as rnd
from operators.rate import RateCap
from operators.trace import TraceView


class Action(enum.Enum):
    KEEP = "keep"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy's answer when it applies. ``probability`` is the chance that a trace like this one
    is kept by this policy (1 for deterministic rules); the adjusted count is its inverse."""

    action: Action
    reason: str
    probability: float = 1.0
    sampled: bool = True
    source: str = ""
    draws: tuple[tuple[str, float], ...] | None = None  # the conjunction of draws, when more than one source


class Policy(Protocol):
    name: str
    # True when ``evaluate`` can answer DROP: in first-match mode the engine must still evaluate
    # this policy after another one kept the trace, because drop wins.
    can_drop: bool = False

    @property
    def guard_drops(self) -> int | None:
        """Traces this policy's token bucket refused although its draw picked them (the rate-based
        policies, exported as tailsift_policy_guard_drops); None for a policy without a bucket."""
        return None

    def evaluate(self, trace: TraceView) -> Verdict | None:
        """A verdict when the policy applies to the trace, else None (no opinion)."""
        ...


def keep(reason: str) -> Verdict:
    return Verdict(Action.KEEP, reason)


def drop(reason: str) -> Verdict:
    return Verdict(Action.DROP, reason)


def draw(trace: TraceView, probability: float, reason: str, salt: str | None = None) -> Verdict:
    """A consistent keep-with-probability verdict: kept iff the trace's randomness (R, or the
    salted hash) is at or above the OTEP 235 threshold of ``probability``."""
    if probability >= 1.0:
        return Verdict(Action.KEEP, reason, 1.0, True, "")
    if probability <= 0.0:
        return Verdict(Action.KEEP, reason, 0.0, False, "")
    t = rnd.threshold(probability)
    if salt:
        return Verdict(
            Action.KEEP, reason, probability, rnd.salted_randomness(trace.trace_id, salt) >= t, "salt:" + salt
        )
    return Verdict(Action.KEEP, reason, probability, trace.randomness >= t, "")


def within(cap: RateCap, verdict: Verdict, units: float, now_ns: int) -> Verdict:
    """``verdict``, or — when it picked the trace but ``cap``'s token bucket has no room for its
    ``units`` — the same verdict with ``sampled=False`` (the cap counts the refusal)."""
    if verdict.sampled and not cap.take(units, now_ns):
        return replace(verdict, sampled=False)
    return verdict
