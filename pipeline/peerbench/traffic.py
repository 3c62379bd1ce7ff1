"""OTLP protobuf bench traffic, as the Collector's kafka exporter writes it, in two shapes:

- ``keyed``: one ``ExportTraceServiceRequest`` per trace keyed by its 32 hex trace-ID characters
  (``partition_traces_by_id: true``); a 5,000-span trace is split into 500-span messages (an SDK
  exports at most 512 spans per batch, and one message of 5,000 spans would pass the broker's
  1 MB default limit), all with the trace's key.
- ``unkeyed``: the Collector's default (``partition_traces_by_id: false``): unkeyed messages of
  200 spans in arrival order, each holding parts of many traces (a trace may straddle two
  messages, as it does in a Collector's export batches).

Traces: 7-10 spans over 6 services (one resource each), HTTP/DB attributes and an e-mail address
(PII for the protector) on the root; ``error_rate`` of them carry one ERROR span, ``slow_rate``
last 600-900 ms (above the bench's 500 ms latency policy), the rest 10-300 ms; plus
``big_traces`` traces of ``big_trace_spans`` spans, the first of them with an error (so both
systems keep it). Deterministic for a seed; timestamps start at ``start_ns``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from pipeline.codecs.protowire import varint as _varint

SERVICES = ("frontend", "checkout", "cart", "payment", "inventory", "shipping")
ROUTES = ("/api/cart", "/api/checkout", "/api/product/{id}", "/api/shipping/quote", "/api/orders/{id}")
KEYED_CHUNK = 500
UNKEYED_BATCH = 200


@dataclass
class Traffic:
    """Messages (key, value) of one shape, and what they hold."""

    messages: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    traces: int = 0
    spans: int = 0
    error_traces: set[bytes] = field(default_factory=set)
    slow_traces: set[bytes] = field(default_factory=set)
    spans_per_trace: dict[bytes, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(len(v) for _, v in self.messages)


def _kv(key: str, value) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = str(value)
    return kv


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (``tag`` = field number << 3 | 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _attrs(field_tag: int, pairs: list[tuple[str, object]]) -> bytes:
    """Repeated KeyValue field bytes: appended to a serialized message they add its attributes (a
    message's serialization followed by more fields parses as the merged message). Pre-serializing
    the constant attribute sets makes the generator ~4× faster than building them per span."""
    return b"".join(_field(field_tag, _kv(k, v).SerializeToString()) for k, v in pairs)


_SPAN_ATTRIBUTES = 0x4A  # Span.attributes = field 9
_RESOURCE_ATTRIBUTES = 0x0A  # Resource.attributes = field 1
_DB_ATTRS = _attrs(
    _SPAN_ATTRIBUTES,
    [
        ("db.system", "postgresql"),
        ("db.namespace", "orders"),
        ("db.query.text", "SELECT id, total FROM orders WHERE customer_id = $1"),
        ("server.address", "orders-db"),
    ],
)
_RPC_ATTRS = {
    s: _attrs(
        _SPAN_ATTRIBUTES,
        [("rpc.system", "grpc"), ("rpc.service", f"shop.{s}"), ("rpc.method", "Handle"), ("server.address", s)],
    )
    for s in SERVICES
}
_ROOT_ATTRS = _attrs(
    _SPAN_ATTRIBUTES,
    [
        ("http.request.method", "GET"),
        ("http.response.status_code", 200),
        ("url.scheme", "https"),
        ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
    ],
)
# ResourceSpans.resource (field 1) and the start of ScopeSpans (field 1: scope) per service
_RESOURCES = {
    s: _field(
        0x0A,
        _attrs(
            _RESOURCE_ATTRIBUTES,
            [
                ("service.name", s),
                ("service.version", f"1.{i}.0"),
                ("service.namespace", "shop"),
                ("deployment.environment", "bench"),
                ("host.name", f"{s}-7d9f8-{i}x{i}"),
                ("k8s.pod.name", f"{s}-7d9f8-{i}x{i}"),
                ("k8s.namespace.name", "shop"),
                ("telemetry.sdk.language", "go"),
                ("telemetry.sdk.name", "opentelemetry"),
                ("telemetry.sdk.version", "1.28.0"),
            ],
        ),
    )
    for i, s in enumerate(SERVICES)
}
_SCOPE = _field(
    0x0A,
    InstrumentationScope(
        name="go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", version="0.53.0"
    ).SerializeToString(),
)


class _Builder:
    def __init__(self, seed: int, start_ns: int):
        self.rnd = random.Random(seed)
        self.t = start_ns

    def _id(self, n: int) -> bytes:
        return (self.rnd.getrandbits(8 * n) or 1).to_bytes(n, "big")

    def trace(self, n_spans: int, error: bool, slow: bool) -> tuple[bytes, list[tuple[str, bytes]]]:
        """(trace ID, [(service, serialized Span)]) — a root and a tree of children within its
        duration; one random span fails if ``error``."""
        rnd = self.rnd
        tid = self._id(16)
        self.t += rnd.randrange(50_000, 500_000)
        start = self.t
        duration = rnd.randrange(600, 900) * 1_000_000 if slow else rnd.randrange(10, 300) * 1_000_000
        failing = rnd.randrange(n_spans) if error else -1
        route = ROUTES[rnd.randrange(len(ROUTES))]
        root = Span(
            trace_id=tid,
            span_id=self._id(8),
            name=f"GET {route}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=start,
            end_time_unix_nano=start + duration,
        )
        spans: list[tuple[str, Span, bytes]] = [
            (
                "frontend",
                root,
                _ROOT_ATTRS
                + _attrs(
                    _SPAN_ATTRIBUTES,
                    [("http.route", route), ("enduser.id", f"user{rnd.randrange(10_000)}@example.com")],
                ),
            )
        ]
        parents = [root]
        for i in range(1, n_spans):
            parent = parents[rnd.randrange(len(parents))]
            p_start, p_end = parent.start_time_unix_nano, parent.end_time_unix_nano
            s_start = p_start + rnd.randrange(0, max(1, (p_end - p_start) // 4))
            s_end = s_start + rnd.randrange(1, max(2, p_end - s_start))
            service = SERVICES[1 + (i % (len(SERVICES) - 1))]
            is_db = i % 3 == 0
            sp = Span(
                trace_id=tid,
                span_id=self._id(8),
                parent_span_id=parent.span_id,
                name="SELECT orders" if is_db else f"{service}.Handle",
                kind=Span.SPAN_KIND_CLIENT if is_db else Span.SPAN_KIND_SERVER,
                start_time_unix_nano=s_start,
                end_time_unix_nano=s_end,
            )
            if not is_db:
                parents.append(sp)
            spans.append((service, sp, _DB_ATTRS if is_db else _RPC_ATTRS[service]))
        if failing >= 0:
            spans[failing][1].status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="upstream timeout"))
        return tid, [(service, sp.SerializeToString() + attrs) for service, sp, attrs in spans]

    @staticmethod
    def request(spans: list[tuple[str, bytes]]) -> bytes:
        """One ExportTraceServiceRequest, one ResourceSpans per service (in first-seen order)."""
        by_service: dict[str, list[bytes]] = {}
        for service, sp in spans:
            by_service.setdefault(service, []).append(_field(0x12, sp))  # ScopeSpans.spans = field 2
        return b"".join(
            _field(0x0A, _RESOURCES[service] + _field(0x12, _SCOPE + b"".join(parts)))
            for service, parts in by_service.items()
        )


def generate(
    traces: int,
    *,
    seed: int = 7,
    start_ns: int,
    error_rate: float = 0.05,
    slow_rate: float = 0.03,
    big_traces: int = 2,
    big_trace_spans: int = 5_000,
) -> tuple[Traffic, Traffic]:
    """The same traces in both shapes: (keyed, unkeyed)."""
    b = _Builder(seed, start_ns)
    keyed, unkeyed = Traffic(), Traffic()
    pending: list[tuple[str, Span]] = []

    # the big traces sit inside the input (not at its end): normal traces keep arriving behind them
    big_at = {(i + 1) * (traces + big_traces) // (big_traces + 2): i for i in range(big_traces)}
    for n in range(traces + big_traces):
        big = big_at.get(n)
        if big is not None:
            size, error, slow = big_trace_spans, big == 0, False
        else:
            size = b.rnd.randrange(7, 11)
            error = b.rnd.random() < error_rate
            slow = b.rnd.random() < slow_rate
        tid, spans = b.trace(size, error, slow)
        for t in (keyed, unkeyed):
            t.traces += 1
            t.spans += len(spans)
            t.spans_per_trace[tid] = len(spans)
            if error:
                t.error_traces.add(tid)
            if slow:
                t.slow_traces.add(tid)
        key = tid.hex().encode()
        for i in range(0, len(spans), KEYED_CHUNK):
            keyed.messages.append((key, b.request(spans[i : i + KEYED_CHUNK])))
        pending.extend(spans)
        while len(pending) >= UNKEYED_BATCH:
            unkeyed.messages.append((None, b.request(pending[:UNKEYED_BATCH])))
            del pending[:UNKEYED_BATCH]
    if pending:
        unkeyed.messages.append((None, b.request(pending)))
    return keyed, unkeyed
