"""Service graph: client → server edges from parent/child spans across services, computed over
every trace at its decision point (before sampling), like the OTel ``servicegraph`` connector.

An edge is a span whose parent span belongs to another service: the parent (typically CLIENT or
PRODUCER) is the caller, the child (SERVER or CONSUMER) the callee — so synchronous calls and
messaging producer → consumer pairs both count. Per edge: requests, failed (either side ERROR) and
the sum of the callee's latencies (what the metrics export: ÷ requests = mean, as the connector's
``request_server_seconds``), kept in whole nanoseconds so that the sum is exact and does not depend
on how requests are grouped: the native core pairs the spans in Rust and hands over per-pair sums
(``add_pairs``), which must come to the same edges as ``add_trace`` over the span dicts. Spans
whose parent is in another batch arrive together here because the assembler holds the whole trace;
a span arriving after its trace was decided is not paired (its trace is gone). Edge labels are
capped for the process's lifetime (``max_edges`` distinct (client, server) pairs, then one
``__overflow__`` edge): the edges become metric label sets, which live as long as the process, so
a cap per drain would let them grow without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

OVERFLOW = "__overflow__"
_NS_PER_MS = 1_000_000.0
_MEMO_LIMIT = 4096  # raw (client, server) service pairs remembered with their label pair


@dataclass(slots=True)
class Edge:
    client: str
    server: str
    requests: int = 0
    failed: int = 0
    latency_sum_ns: int = 0  # callee latencies (negative ones as 0)

    @property
    def latency_sum_ms(self) -> float:
        return self.latency_sum_ns / _NS_PER_MS


class ServiceGraph:
    def __init__(self, max_edges: int = 1_000, service_label: Callable[[str], str] | None = None):
        self.max_edges = max_edges
        # service names become metric labels: the caller's protection (privacy) applies to them
        self.service_label = service_label
        self.edges: dict[tuple[str, str], Edge] = {}
        self._labelled: set[tuple[str, str]] = set()  # every pair ever admitted (bounded by max_edges)
        # raw (client, server) → the label pair it counts under. A pure function of the pair over
        # the process's life: labels and admissions only grow, so a pair admitted stays admitted
        # and one refused at the cap stays refused.
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._edge_of: dict[tuple[str, str], Edge] = {}  # raw pair → its edge, until the next drain

    def add_trace(self, spans: Iterable[dict]) -> int:
        """Pair the spans of one trace (each with ``service``) and count the requests found;
        returns how many."""
        spans = spans if isinstance(spans, list) else list(spans)
        get = {s["span_id"]: s for s in spans}.get
        edge_of = self._edge_of
        n = 0
        for child in spans:
            parent = get(child.get("parent_span_id"))
            if parent is None:
                continue
            client, server = parent["service"], child["service"]
            if client == server:
                continue
            edge = edge_of.get((client, server))
            if edge is None:
                edge = self._edge((client, server))
            edge.requests += 1
            if child["status_code"] == "ERROR" or parent["status_code"] == "ERROR":
                edge.failed += 1
            latency = child["end_time_unix_nano"] - child["start_time_unix_nano"]
            if latency > 0:
                edge.latency_sum_ns += latency
            n += 1
        return n

    def add_pairs(self, pairs: Iterable[tuple[str, str, int, int, int]]) -> None:
        """Count requests paired elsewhere (the native core pairs a chunk of traces as
        ``add_trace`` does): per raw (client, server) pair its requests, failed requests and latency
        sum in nanoseconds, pairs in the order first found — so admission under the cap is the
        same as adding those traces one by one."""
        edge_of = self._edge_of
        for client, server, requests, failed, latency_ns in pairs:
            edge = edge_of.get((client, server))
            if edge is None:
                edge = self._edge((client, server))
            edge.requests += requests
            edge.failed += failed
            edge.latency_sum_ns += latency_ns

    def _edge(self, raw: tuple[str, str]) -> Edge:
        """The edge a raw (client, server) pair counts on until the next drain."""
        key = self._pairs.get(raw)
        if key is None:
            key = self._admit(raw)
        edge = self.edges.get(key)
        if edge is None:
            edge = self.edges[key] = Edge(key[0], key[1])
        if len(self._edge_of) >= _MEMO_LIMIT:
            self._edge_of.clear()
        self._edge_of[raw] = edge
        return edge

    def _admit(self, raw: tuple[str, str]) -> tuple[str, str]:
        """The label pair of a raw (client, server) pair, admitted under the cap (memoized)."""
        key = raw
        if self.service_label is not None:
            key = (self.service_label(raw[0]), self.service_label(raw[1]))
        if key not in self._labelled:
            if len(self._labelled) >= self.max_edges:
                key = (OVERFLOW, OVERFLOW)
            else:
                self._labelled.add(key)
        if len(self._pairs) >= _MEMO_LIMIT:
            self._pairs.clear()
        self._pairs[raw] = key
        return key

    def drain(self) -> list[Edge]:
        """The edges counted since the last drain (for periodic emission)."""
        out = list(self.edges.values())
        self.edges = {}
        self._edge_of = {}
        return out
