"""``rules``: a Refinery-style rules-based sampler. Rules are tried in order; the first whose
conditions all hold decides: keep with ``sample_rate`` N (probability 1/N, drawn consistently;
adjusted count N), ``drop``, or hand the trace to a named sampler (any policy, defined under the
rules policy's ``samplers``; only traces routed to it are counted by it). No rule matches: no
opinion.

Conditions: ``field``, ``operator``, ``value``. Operators: ``= != > < >= <= starts-with contains
does-not-contain exists not-exists matches in not-in has-root-span``. A field is read from span
headers when it names one (``service.name``, ``name``, ``kind``, ``status_code``; no decode),
else from span attributes (decoded lazily). ``root.<field>`` reads the root span only.
``has-root-span`` takes ``value: true|false`` and no field.

Scope ``trace`` (default): each condition may be met by a different span. Scope ``span``: one
span must meet them all. A missing field meets no operator except ``not-exists`` (and
``!=``/``does-not-contain``/``not-in`` fail on it too: absent is not "different"). Comparisons
are numeric when both sides are numbers or numeric strings (booleans excepted); ``=``/``!=``
fall back to strings, ordering between non-numbers never matches; ``matches`` is a
regex search, compiled when the policy is built."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from operators.policies.base import Policy, Verdict, draw, drop
from operators.trace import SpanHeader, TraceView

OPERATORS = (
    "=",
    "!=",
    ">",
    "<",
    ">=",
    "<=",
    "starts-with",
    "contains",
    "does-not-contain",
    "exists",
    "not-exists",
    "matches",
    "in",
    "not-in",
    "has-root-span",
)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


@dataclass
class Condition:
    field: str
    operator: str
    value: Any = None
    _regex: re.Pattern | None = None
    _root_only: bool = False
    _key: str = ""
    _set: frozenset = frozenset()

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"unknown operator {self.operator!r}")
        if self.operator == "matches":
            self._regex = re.compile(str(self.value))
        if self.operator in ("in", "not-in"):
            self._set = frozenset(_str(v) for v in (self.value or ()))
        self._root_only = self.field.startswith("root.")
        self._key = self.field[5:] if self._root_only else self.field

    def _test(self, v: Any) -> bool:
        """The operator on one present value."""
        op, want = self.operator, self.value
        if op == "exists":
            return True
        if op in ("=", "!=", ">", "<", ">=", "<="):
            a, b = _num(v), _num(want)
            if op in ("=", "!="):
                equal = a == b if a is not None and b is not None else _str(v) == _str(want)
                return equal if op == "=" else not equal
            if a is None or b is None:
                return False  # ordering needs two numbers
            return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
        s = _str(v)
        if op == "starts-with":
            return s.startswith(_str(want))
        if op == "contains":
            return _str(want) in s
        if op == "does-not-contain":
            return _str(want) not in s
        if op == "matches":
            return self._regex is not None and self._regex.search(s) is not None
        if op == "in":
            return s in self._set
        if op == "not-in":
            return s not in self._set
        return False

    def on_span(self, trace: TraceView, span: SpanHeader) -> bool:
        if self._root_only and span is not trace.root:
            return False
        v = trace.value(span, self._key)
        if self.operator == "not-exists":
            return v is None
        return v is not None and self._test(v)

    def on_trace(self, trace: TraceView) -> bool:
        if self.operator == "has-root-span":
            return (trace.root is not None) == bool(self.value if self.value is not None else True)
        spans = [trace.root] if self._root_only else trace.spans
        if self.operator == "not-exists":
            return all(s is None or trace.value(s, self._key) is None for s in spans)
        return any(s is not None and self.on_span(trace, s) for s in spans)


@dataclass
class Rule:
    name: str
    conditions: Sequence[Condition] = ()
    sample_rate: float | None = 1.0
    drop: bool = False
    sampler: Policy | None = None
    scope: str = "trace"  # trace | span

    def matches(self, trace: TraceView) -> bool:
        if self.scope == "span":
            trace_level = [c for c in self.conditions if c.operator == "has-root-span"]
            span_level = [c for c in self.conditions if c.operator != "has-root-span"]
            if not all(c.on_trace(trace) for c in trace_level):
                return False
            if not span_level:
                return True
            return any(all(c.on_span(trace, s) for c in span_level) for s in trace.spans)
        return all(c.on_trace(trace) for c in self.conditions)


@dataclass
class RulesPolicy(Policy):
    name: str
    rules: Sequence[Rule]
    can_drop: bool = field(init=False)

    def __post_init__(self) -> None:
        self.can_drop = any(r.drop or (r.sampler is not None and r.sampler.can_drop) for r in self.rules)

    def evaluate(self, trace: TraceView) -> Verdict | None:
        for rule in self.rules:
            if not rule.matches(trace):
                continue
            if rule.drop:
                return drop(f"rule:{rule.name}:drop")
            if rule.sampler is not None:
                v = rule.sampler.evaluate(trace)
                if v is None:
                    return None
                return Verdict(v.action, f"rule:{rule.name}:{v.reason}", v.probability, v.sampled, v.source, v.draws)
            rate = rule.sample_rate or 1.0
            return draw(trace, 1.0 / rate, f"rule:{rule.name}" + (f":rate={rate:g}" if rate != 1 else ""))
        return None
