"""Combine policy verdicts into one decision per trace.

Semantics (documented in the README, "Sampling semantics"):

- A DROP verdict from any evaluated policy wins, in both modes (the first in config order names it).
- ``any_match`` (default): every policy is evaluated, in config order. The trace is kept when any
  applying policy's draw keeps it. Its keep probability is the probability that at least one of
  the applying policies keeps a trace like it, computed exactly over their draws (draws on one
  randomness source nest, sources are independent, a verdict may need draws on several — see
  ``operators.keep_probability``). A deterministic rule (p = 1) makes it 1. The deciding policy is
  the picking policy with the highest probability (ties: the earlier one) — so a trace an error
  rule keeps anyway is never counted as 1/p traces just because a 5 % rule picked it too.
- ``first_match``: policies are evaluated in order and the first one that *applies* decides alone
  (Refinery rules semantics): kept iff its draw keeps, π = its probability. Later policies are
  evaluated only if they can drop. A probabilistic policy applies to every trace, so in this mode
  it belongs last.
- Not kept: dropped as ``not_sampled``.
- A policy that raises is counted in ``policy_errors`` and treated as having no opinion, so one
  buggy rule cannot stop the stream (the pipeline exports the count as a metric).

Upstream consistent sampling: a trace arriving with ``ot=th:T_up`` passed R ≥ T_up upstream, so a
draw R ≥ T keeps it here with the per-stage probability (2^56 − max(T, T_up)) / (2^56 − T_up)
(salted draws are independent of R and keep their p). ``probability`` is *cumulative*, as the
``th`` on the wire is (OTEP 235): per-stage π × the upstream probability (2^56 − T_up) / 2^56.
``adjusted_count`` = 1 / cumulative π: summed over kept traces it estimates, without bias
(Horvitz–Thompson), the traces before any sampling; ``stage_adjusted_count`` = 1 / per-stage π
estimates the traces that arrived here. An upstream ``th`` the trace's own randomness contradicts
(R < T_up: no consistent sampler could have kept it) is ignored. ``threshold`` is the OTEP 235
threshold to write as ``ot=th:`` when every applying draw used R and the tail is stricter than
upstream: max(T, T_up), i.e. the cumulative probability's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from operators import keep_probability as kp
from operators import randomness as rnd
from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView
from operators.tracestate import upstream_threshold

_DROP = Action.DROP
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
    upstream_probability: float = 1.0  # of the upstream consistent sampler the trace passed (its th)

    @property
    def adjusted_count(self) -> float:
        """How many traces a kept trace stands for (1 / keep probability). In dry-run mode a trace
        that would have been dropped stands for 0, so sums over the output match a real run."""
        if self.dry_run_kept is False or self.probability <= 0.0:
            return 0.0
        return 1.0 / self.probability

    @property
    def stage_adjusted_count(self) -> float:
        """How many of the traces that *arrived here* a kept trace stands for (per-stage 1 / π)."""
        return self.adjusted_count * self.upstream_probability

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
        # runs once per decided trace: the evaluation is inlined (``_evaluate``) and the verdicts'
        # events are built only for a kept trace — most traces are dropped and need none
        best: Verdict | None = None
        best_policy: Policy | None = None
        applying: list[Verdict] = []
        for policy in self.policies:
            try:
                verdict = policy.evaluate(trace)
            except Exception:  # noqa: BLE001 - a bad rule must not stop the stream
                self.policy_errors[policy.name] = self.policy_errors.get(policy.name, 0) + 1
                continue
            if verdict is None:
                continue
            if verdict.action is _DROP:
                return Decision(False, policy.name, verdict.reason, 1.0, vetoed=True)
            applying.append(verdict)
            if verdict.sampled and (best is None or verdict.probability > best.probability):
                best, best_policy = verdict, policy
        if best is None or best_policy is None:
            return NOT_SAMPLED
        events = [kp.conjunction(v.probability, v.source, v.draws) for v in applying]
        return _kept(best_policy, best, events, trace)

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
        return _kept(policy, verdict, [kp.conjunction(verdict.probability, verdict.source, verdict.draws)], trace)


def _upstream_threshold(trace: TraceView) -> int:
    t_up = upstream_threshold(trace.trace_state) if trace.trace_state else 0
    if t_up and trace.randomness < t_up:
        return 0  # contradicted by the trace's own randomness: not a consistent upstream sampler's th
    return t_up


def _r_threshold(event: dict[str, float]) -> int:
    p = event.get(kp.R, 1.0)
    return rnd.threshold(p) if p > 0.0 else rnd.MAX_RANDOMNESS


def _kept(policy: Policy, verdict: Verdict, events: list[dict[str, float]], trace: TraceView) -> Decision:
    """The keep decision, its cumulative and per-stage probabilities and its ``th``."""
    t_up = _upstream_threshold(trace)
    only_r = all(set(e) <= {kp.R} for e in events)
    th = None
    if only_r:
        t_tail = min(_r_threshold(e) for e in events)  # nested draws on R: the loosest one keeps
        if t_tail > t_up:
            th = t_tail
    if t_up:
        events = [{s: (kp.conditional_on_upstream(p, t_up) if s == kp.R else p) for s, p in e.items()} for e in events]
        events = [{s: p for s, p in e.items() if p < 1.0} for e in events]
    stage = kp.union_probability(events)
    upstream = rnd.probability(t_up)
    return Decision(True, policy.name, verdict.reason, stage * upstream, th, upstream_probability=upstream)
