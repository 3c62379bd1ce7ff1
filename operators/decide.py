"""Combine policy verdicts into one decision per trace.

Semantics (documented in the README, "Sampling semantics"):

- A DROP verdict from any evaluated policy wins, in both modes (the first in config order names it).
- ``any_match`` (default): every policy is evaluated, in config order. The trace is kept when any
  applying policy's draw keeps it. Its keep probability π is the probability that at least one of
  the applying policies keeps a trace like it: draws on the trace's own randomness nest, so per
  randomness source the largest probability counts, and sources are independent:
  π = 1 − Π_source (1 − max p). A deterministic rule (p = 1) makes π = 1. The deciding policy is the
  picking policy with the highest probability (ties: the earlier one) — so a trace an error rule
  keeps anyway is never counted as 1/p traces just because a 5 % rule picked it too.
- ``first_match``: policies are evaluated in order and the first one that *applies* decides alone
  (Refinery rules semantics): kept iff its draw keeps, π = its probability. Later policies are
  evaluated only if they can drop. A probabilistic policy applies to every trace, so in this mode
  it belongs last.
- Not kept: dropped as ``not_sampled``.
- A policy that raises is counted in ``policy_errors`` and treated as having no opinion, so one
  buggy rule cannot stop the stream (the pipeline exports the count as a metric).

``adjusted_count`` = 1 / π: summed over kept traces it estimates the number of traces without
bias (Horvitz–Thompson). ``threshold`` is the OTEP 235 rejection threshold of π when π < 1 and
every applying draw used the trace's own randomness — the value written as ``ot=th:``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from operators import randomness as rnd
from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView

ANY_MATCH = "any_match"
FIRST_MATCH = "first_match"


@dataclass(frozen=True, slots=True)
class Decision:
    keep: bool
    policy: str
    reason: str
    probability: float = 1.0
    threshold: int | None = None  # OTEP 235 th of a consistent keep with probability < 1
    dry_run_kept: bool | None = None  # set in dry-run mode: what would have happened
    vetoed: bool = False  # dropped by a policy's DROP verdict: nothing brings it back (follow_links neither)

    @property
    def adjusted_count(self) -> float:
        """How many traces a kept trace stands for (1 / keep probability). In dry-run mode a trace
        that would have been dropped stands for 0, so sums over the output match a real run."""
        if self.dry_run_kept is False or self.probability <= 0.0:
            return 0.0
        return 1.0 / self.probability

    @property
    def would_keep(self) -> bool:
        return self.keep if self.dry_run_kept is None else self.dry_run_kept

    def dry_run(self) -> Decision:
        """The decision as dry-run mode emits it: kept, annotated with what would have happened."""
        return replace(self, keep=True, threshold=None, dry_run_kept=self.keep)


NOT_SAMPLED = Decision(False, "", "not_sampled", 1.0)


class DecisionEngine:
    """Owns the ordered policies of one config and combines their verdicts into one ``Decision``
    per trace (keep/drop, deciding policy, keep probability, OTEP 235 threshold), counting the
    policies that raised. It never buffers traces, reads a clock or does I/O, and never lets a
    failing policy stop the stream or a drop verdict be outvoted by a keep."""

    def __init__(self, policies: Sequence[Policy], mode: str = ANY_MATCH):
        if mode not in (ANY_MATCH, FIRST_MATCH):
            raise ValueError(f"unknown decision mode {mode!r}")
        self.policies = list(policies)
        self.mode = mode
        self._can_drop = [p.can_drop for p in self.policies]
        self.policy_errors: dict[str, int] = {}

    def _evaluate(self, policy: Policy, trace: TraceView) -> Verdict | None:
        try:
            return policy.evaluate(trace)
        except Exception:  # noqa: BLE001 - a bad rule must not stop the stream
            self.policy_errors[policy.name] = self.policy_errors.get(policy.name, 0) + 1
            return None

    def decide(self, trace: TraceView) -> Decision:
        if self.mode == FIRST_MATCH:
            return self._first_match(trace)
        return self._any_match(trace)

    def _any_match(self, trace: TraceView) -> Decision:
        best: tuple[Policy, Verdict] | None = None
        by_source: dict[str, float] = {}
        for policy in self.policies:
            verdict = self._evaluate(policy, trace)
            if verdict is None:
                continue
            if verdict.action is Action.DROP:
                return Decision(False, policy.name, verdict.reason, 1.0, vetoed=True)
            p = verdict.probability
            if p > by_source.get(verdict.source, 0.0):
                by_source[verdict.source] = p
            if verdict.sampled and (best is None or p > best[1].probability):
                best = (policy, verdict)
        if best is None:
            return NOT_SAMPLED
        policy, verdict = best
        if len(by_source) == 1:
            ((source, prob),) = by_source.items()
        else:
            miss = 1.0
            for p in by_source.values():
                miss *= 1.0 - p
            prob, source = 1.0 - miss, "mixed"
        th = rnd.threshold(prob) if prob < 1.0 and source == "" else None
        return Decision(True, policy.name, verdict.reason, prob, th)

    def _first_match(self, trace: TraceView) -> Decision:
        first: tuple[Policy, Verdict] | None = None
        for policy, droppable in zip(self.policies, self._can_drop):
            if first is not None and not droppable:
                continue
            verdict = self._evaluate(policy, trace)
            if verdict is None:
                continue
            if verdict.action is Action.DROP:
                return Decision(False, policy.name, verdict.reason, 1.0, vetoed=True)
            if first is None:
                first = (policy, verdict)
        if first is None:
            return NOT_SAMPLED
        policy, verdict = first
        if not verdict.sampled:
            return Decision(False, policy.name, "not_sampled", verdict.probability)
        p = verdict.probability
        th = rnd.threshold(p) if p < 1.0 and verdict.source == "" else None
        return Decision(True, policy.name, verdict.reason, p, th)
