"""Keep traces where some span's numeric attribute ``key`` lies in [min_value, max_value]
(either bound optional, both inclusive), as the OTel Collector's numeric_attribute policy.
Booleans and strings are not numbers; array values match when an element does.
``invert_match`` keeps the traces where no span matches (a missing attribute does not match)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from operators.policies.base import Policy, Verdict, keep
from operators.trace import TraceView


@dataclass
class NumericAttributePolicy(Policy):
    name: str
    key: str
    min_value: float | None = None
    max_value: float | None = None
    invert_match: bool = False

    def _match(self, value: Any) -> bool:
        if isinstance(value, list):
            return any(self._match(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.min_value is not None and value < self.min_value:
            return False
        if self.max_value is not None and value > self.max_value:
            return False
        return True

    def evaluate(self, trace: TraceView) -> Verdict | None:
        matched = any(self._match(v) for v in trace.values(self.key))
        if matched != self.invert_match:
            return keep(f"numeric_attribute:{self.key}" + (":inverted" if self.invert_match else ""))
        return None
