"""Keep traces where some span's attribute ``key`` has one of ``values`` — exact strings, or, with
``enabled_regex_matching``, regular expressions searched anywhere in the value (unanchored, as
the OTel Collector; use ``^…$`` to anchor). Array values match when an element does.
``invert_match`` keeps the traces where no span matches (a missing attribute does not match).

Header fields need no decoding: ``service.name``, ``name``/``span.name``, ``kind``, ``status_code``.
Other keys decode span attributes lazily, once per span (see ``TraceView.attributes``).
Patterns are compiled when the policy is built: a bad regex is a config error, not a runtime one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from operators.policies.base import Policy, Verdict, keep
from operators.trace import TraceView


@dataclass
class StringAttributePolicy(Policy):
    name: str
    key: str
    values: tuple[str, ...]
    enabled_regex_matching: bool = False
    invert_match: bool = False
    _exact: frozenset[str] = field(init=False, repr=False)
    _patterns: list[re.Pattern] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._exact = frozenset(self.values)
        self._patterns = [re.compile(v) for v in self.values] if self.enabled_regex_matching else []

    def _match(self, value: Any) -> bool:
        if isinstance(value, list):
            return any(self._match(v) for v in value)
        if not isinstance(value, str):
            return False
        if self._patterns:
            return any(p.search(value) for p in self._patterns)
        return value in self._exact

    def evaluate(self, trace: TraceView) -> Verdict | None:
        matched = any(self._match(v) for v in trace.values(self.key))
        if matched != self.invert_match:
            return keep(f"string_attribute:{self.key}" + (":inverted" if self.invert_match else ""))
        return None
