"""Keep traces that contain a span with one of the given status codes (default: ERROR)."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView


@dataclass
class StatusCodePolicy(Policy):
    name: str
    status_codes: frozenset[str] = field(default_factory=lambda: frozenset({"ERROR"}))
    # evaluated for every decided trace: the test and the (immutable) verdict are built once
    _errors_only: bool = field(init=False, repr=False)
    _verdict: Verdict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._errors_only = self.status_codes == {"ERROR"}
        self._verdict = Verdict(Action.KEEP, "status_code:" + "|".join(sorted(self.status_codes)))

    def evaluate(self, trace: TraceView) -> Verdict | None:
        if self._errors_only:
            matched = trace.has_error  # cached on the view: other policies may ask too
        else:
            matched = any(s["status_code"] in self.status_codes for s in trace.spans)
        return self._verdict if matched else None
