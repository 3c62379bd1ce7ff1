"""``rare_path``: keep traces whose *shape* is rare, so the kept set covers the space of
behaviours instead of mirroring the traffic mix (in the spirit of Sifter / Sieve; none of the
Collector or Refinery samplers does this).

Signature: the set of call edges ``parent service → child service/operation`` (the root as
``→ service/operation``, a span whose parent has not arrived as ``? → …``), sorted and hashed
(BLAKE2b, 64 bits). With ``multiplicity`` the edges form a multiset whose counts are bucketed
by powers of two (so 3 vs 4 fan-out calls look alike, 1 vs 8 do not). Headers only: no decode.

Frequency: a sliding-window count-min sketch (two rotating sketches of ``sketch_width`` ×
``sketch_depth`` 32-bit counters — fixed memory whatever the number of shapes) estimates how
often the signature was seen in the last ``window_s``, this trace included: f. The trace is kept
with p = max(min_probability, min(1, keep_per_window / f)), drawn consistently on the trace's
randomness; its adjusted count is 1/p. So about ``keep_per_window`` traces of each shape are kept
per window, every shape seen fewer times than that is kept whole, and the count-min's
over-estimates can only lower p (a wrong-but-honest count, never a biased one)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from operators.policies.base import Policy, Verdict, draw
from operators.sketches.count_min import SlidingCountMin
from operators.trace import TraceView


def signature(trace: TraceView, multiplicity: bool = False) -> int:
    by_id = {s["span_id"]: s for s in trace.spans}
    edges: dict[str, int] = {}
    for s in trace.spans:
        pid = s.get("parent_span_id")
        if pid is None:
            parent = ""
        else:
            p = by_id.get(pid)
            parent = "?" if p is None else p["service"]
        e = f"{parent}>{s['service']}/{s['name']}"
        edges[e] = edges.get(e, 0) + 1
    if multiplicity:
        text = "\n".join(f"{e}*{n.bit_length()}" for e, n in sorted(edges.items()))
    else:
        text = "\n".join(sorted(edges))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class RarePathPolicy(Policy):
    name: str
    keep_per_window: float = 5.0
    window_s: float = 60.0
    min_probability: float = 0.0
    sketch_width: int = 2048
    sketch_depth: int = 4
    multiplicity: bool = False
    _sketch: SlidingCountMin = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._sketch = SlidingCountMin(int(self.window_s * 1e9), self.sketch_width, self.sketch_depth)

    def evaluate(self, trace: TraceView) -> Verdict | None:
        sig = signature(trace, self.multiplicity)
        f = self._sketch.add(sig, trace.now_ns)
        p = max(self.min_probability, min(1.0, self.keep_per_window / f)) if f > 0 else 1.0
        return draw(trace, p, "rare_path:" + ("new" if f <= 1 else f"seen~{f:.0f}"))

    @property
    def memory_bytes(self) -> int:
        return self._sketch.memory_bytes
