"""The exact probability that a trace is kept, when policies draw on several randomness sources.

A keep verdict stands for an event "every draw it made came out keep". Each draw uses one source:
the trace's own OTEP 235 randomness R (source ``""``) or an independent salted hash (any other
name). A draw with probability p on a source keeps iff that source's uniform value lies in its top
p share, so draws on one source nest (the conjunction keeps the smallest p, the union the largest)
and draws on different sources are independent. A verdict's event is therefore a *conjunction*
``{source: p}`` (e.g. ``and(prob 50 %, prob 50 % salted)`` is ``{"": 0.5, "salt:s": 0.5}``), and
the decision's π is the probability of the union of such conjunctions — which neither "the largest
p per source" nor "independent events multiply" gets right once one verdict mixes sources with
another (``and(prob 50 %, prob 50 % salted)`` beside ``prob 50 %``: 0.625 claimed, 0.5 true).

``union_probability`` computes it exactly by splitting on one source at a time; configs have a
handful of draws, so the recursion is small.

Upstream head sampling (OTEP 235 ``th`` on arriving traces) conditions R: every arriving trace has
R ≥ T_up, so a draw R ≥ T keeps an arriving trace with probability
(2^56 − max(T, T_up)) / (2^56 − T_up) — ``conditional_on_upstream``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from operators import randomness as rnd

R = ""  # the trace's own randomness

Conjunction = Mapping[str, float]


def conjunction(probability: float, source: str, draws: Iterable[tuple[str, float]] | None) -> dict[str, float]:
    """A verdict's event as {source: p}; sources it keeps for sure (p ≥ 1) are left out."""
    items = draws if draws is not None else ((source, probability),)
    out: dict[str, float] = {}
    for s, p in items:
        if p < 1.0:
            out[s] = min(out.get(s, 1.0), max(p, 0.0))
    return out


def conjoin(*events: Conjunction) -> dict[str, float]:
    """The event "all of these keep": per source the smallest p."""
    out: dict[str, float] = {}
    for e in events:
        for s, p in e.items():
            out[s] = min(out.get(s, 1.0), p)
    return out


def verdict_fields(event: Conjunction) -> tuple[float, str, tuple[tuple[str, float], ...] | None]:
    """(probability, source, draws) of a verdict whose keep is ``event``: one source is named as
    ``source``; several are listed in ``draws``."""
    sources = list(event)
    if len(sources) <= 1:
        return event_probability(event), (sources[0] if sources else R), None
    return event_probability(event), R, tuple(event.items())


def event_probability(event: Conjunction) -> float:
    out = 1.0
    for p in event.values():
        out *= p
    return out


def union_probability(events: Sequence[Conjunction]) -> float:
    """P(at least one event keeps), sources independent and uniform."""
    if any(not e for e in events):
        return 1.0
    events = [e for e in events if all(p > 0.0 for p in e.values())]
    if not events:
        return 0.0
    if len(events) == 1:
        return event_probability(events[0])
    source = next(iter(events[0]))
    # v = the source's value measured from the top: an event needing p on it holds iff v < p.
    levels = sorted({e[source] for e in events if source in e})
    without = [e for e in events if source not in e]
    total, below = 0.0, 0.0
    for q in levels:
        alive = without + [{s: p for s, p in e.items() if s != source} for e in events if e.get(source, -1.0) >= q]
        total += (q - below) * union_probability(alive)
        below = q
    if below < 1.0 and without:
        total += (1.0 - below) * union_probability(without)
    return total


def conditional_on_upstream(p: float, upstream_threshold: int) -> float:
    """The per-stage probability of a draw R ≥ threshold(p) among traces that passed R ≥ T_up."""
    if upstream_threshold <= 0 or p >= 1.0:
        return p
    if p <= 0.0:
        return 0.0
    t = max(rnd.threshold(p), upstream_threshold)
    return (rnd.MAX_RANDOMNESS - t) / (rnd.MAX_RANDOMNESS - upstream_threshold)
