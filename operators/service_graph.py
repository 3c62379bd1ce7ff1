"""Service graph: client → server edges from parent/child spans across services, computed over
every trace at its decision point (before sampling), like the OTel ``servicegraph`` connector.

An edge is a span whose parent span belongs to another service: the parent (typically CLIENT or
PRODUCER) is the caller, the child (SERVER or CONSUMER) the callee — so synchronous calls and
messaging producer → consumer pairs both count. Per edge: requests, failed (either side ERROR) and
the callee's latency in a DDSketch (≤ α relative error, mergeable). Spans whose parent is in another
batch arrive together here because the assembler holds the whole trace; a span arriving after its
trace was decided is not paired (its trace is gone). Edge labels are capped for the process's
lifetime (``max_edges`` distinct (client, server) pairs, then one ``__overflow__`` edge): the
edges become metric label sets, which live as long as the process, so a cap per drain would let
them grow without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ddsketch import DDSketch

OVERFLOW = "__overflow__"
_NS_PER_MS = 1_000_000.0


@dataclass
class Edge:
    client: str
    server: str
    requests: int = 0
    failed: int = 0
    sketch: DDSketch = field(default_factory=lambda: DDSketch(0.01))


class ServiceGraph:
    def __init__(
        self, max_edges: int = 1_000, relative_accuracy: float = 0.01, service_label: Callable[[str], str] | None = None
    ):
        self.max_edges = max_edges
        # service names become metric labels: the caller's protection (privacy) applies to them
        self.service_label = service_label
        self.relative_accuracy = relative_accuracy
        self.edges: dict[tuple[str, str], Edge] = {}
        self._labelled: set[tuple[str, str]] = set()  # every pair ever admitted (bounded by max_edges)

    def add_trace(self, spans: Iterable[dict]) -> list[tuple[str, str, bool, float]]:
        """Pair the spans of one trace (each with ``service``); returns the (client, server,
        failed, latency_ms) requests it found, after counting them."""
        spans = list(spans)
        by_id = {s["span_id"]: s for s in spans}
        found = []
        for child in spans:
            parent = by_id.get(child.get("parent_span_id"))
            if parent is None or parent["service"] == child["service"]:
                continue
            failed = child["status_code"] == "ERROR" or parent["status_code"] == "ERROR"
            latency = max(0.0, (child["end_time_unix_nano"] - child["start_time_unix_nano"]) / _NS_PER_MS)
            key = (parent["service"], child["service"])
            if self.service_label is not None:
                key = (self.service_label(key[0]), self.service_label(key[1]))
            if key not in self._labelled:
                if len(self._labelled) >= self.max_edges:
                    key = (OVERFLOW, OVERFLOW)
                else:
                    self._labelled.add(key)
            edge = self.edges.get(key)
            if edge is None:
                edge = self.edges[key] = Edge(key[0], key[1], sketch=DDSketch(self.relative_accuracy))
            edge.requests += 1
            edge.failed += failed
            edge.sketch.add(latency)
            found.append((key[0], key[1], failed, latency))
        return found

    def drain(self) -> list[Edge]:
        """The edges counted since the last drain (for periodic emission)."""
        out = list(self.edges.values())
        self.edges = {}
        return out
