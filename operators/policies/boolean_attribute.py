"""Keep traces where some span's boolean attribute ``key`` equals ``value``, as the OTel
Collector's boolean_attribute policy. ``invert_match`` keeps the traces where no span matches
(a missing attribute, or a non-boolean value, does not match)."""

from __future__ import annotations

from dataclasses import dataclass

from operators.policies.base import Policy, Verdict, keep
from operators.trace import TraceView


@dataclass
class BooleanAttributePolicy(Policy):
    name: str
    key: str
    value: bool
    invert_match: bool = False

    def evaluate(self, trace: TraceView) -> Verdict | None:
        matched = any(v is self.value for v in trace.values(self.key))
        if matched != self.invert_match:
            return keep(
                f"boolean_attribute:{self.key}={str(self.value).lower()}" + (":inverted" if self.invert_match else "")
            )
        return None
