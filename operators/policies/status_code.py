"""Keep traces that contain a span with one of the given status codes (default: ERROR)."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass
class StatusCodePolicy(Policy):
    name: str
    status_codes: frozenset[str] = field(default_factory=lambda: frozenset({"ERROR"}))

    def evaluate(self, trace: TraceView) -> Verdict | None:
        if self.status_codes == {"ERROR"}:
            matched = trace.has_error  # cached on the view: other policies may ask too
        else:
            matched = any(s["status_code"] in self.status_codes for s in trace.spans)
        if matched:
            return Verdict(Action.KEEP, "status_code:" + "|".join(sorted(self.status_codes)))
        return None
