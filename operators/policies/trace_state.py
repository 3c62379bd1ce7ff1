"""Keep traces whose W3C tracestate has member ``key`` with one of ``values`` (exact match), as
the OTel Collector's trace_state policy. The root's tracestate is used (else the first non-empty
one): members of one trace share it."""

from __future__ import annotations

from dataclasses import dataclass

from operators.policies.base import Policy, Verdict, keep
from operators.trace import TraceView


@dataclass
class TraceStatePolicy(Policy):
    name: str
    key: str
    values: frozenset[str]

    def evaluate(self, trace: TraceView) -> Verdict | None:
        ts = trace.trace_state
        if not ts or self.key not in ts:
            return None
        for member in ts.split(","):
            k, sep, v = member.strip().partition("=")
            if sep and k.strip() == self.key and v.strip() in self.values:
                return keep(f"trace_state:{self.key}={v.strip()}")
        return None
