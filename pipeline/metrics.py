"""The job's Prometheus self-metrics. Labels carry only bounded, non-sensitive values
(outcomes, reasons, policy names from the config) — never span content."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

SPANS = Counter("tailsift_spans_ingested", "Spans decoded from the input topic")
MESSAGES = Counter("tailsift_messages", "Input messages by outcome", ["outcome"])
TRACES_DECIDED = Counter("tailsift_traces_decided", "Traces decided", ["decision", "policy", "forced"])
DECISION_POINTS = Counter(
    "tailsift_decision_points", "Traces released for a decision, by trigger", ["trigger"]
)  # decision_wait | root_quiet | span_limit | memory_bound
LATE_SPANS = Counter(
    "tailsift_late_spans",
    "Spans that arrived after their trace was decided, by outcome "
    "(kept: emitted marked late; dropped; replayed: already in traces.kept, skipped after a restart)",
    ["outcome"],
)
KEPT_SPANS = Counter("tailsift_kept_spans", "Spans of kept traces at decision time (late spans excluded)")
DEADLETTERS = Counter("tailsift_deadletters", "Messages sent to the dead-letter topic", ["reason"])
RECORDS_PRODUCED = Counter("tailsift_records_produced", "Records written to output topics", ["topic"])
PII_DETECTIONS = Counter("tailsift_pii_detections", "Values in kept traces replaced by a PII detector", ["detector"])
PII_RULE_ACTIONS = Counter(
    "tailsift_pii_rule_actions", "Attribute values in kept traces changed or removed by a privacy rule", ["rule"]
)
POLICY_GUARD_DROPS = Gauge(
    "tailsift_policy_guard_drops",
    "Traces a rate policy's token bucket refused (a burst faster than its rate estimate)",
    ["policy"],
)
POLICY_ERRORS = Gauge("tailsift_policy_errors", "Policy evaluations that raised (treated as no opinion)", ["policy"])
TRACES_IN_MEMORY = Gauge("tailsift_traces_in_memory", "Traces buffered awaiting a decision")
SPANS_BUFFERED = Gauge("tailsift_spans_buffered", "Spans buffered awaiting a decision")
UNCOMMITTED = Gauge("tailsift_uncommitted_messages", "Input messages received but not yet safe to commit")
OPEN_WINDOWS = Gauge("tailsift_sli_open_windows", "SLI window partials not yet emitted")
# SLOs (label: SLO names from the config): exact pre-sampling event counts, added when a window is
# emitted; burn rates are ratios of their rates summed over workers (see `tailsift slo rules`)
SLO_EVENTS = Counter("tailsift_slo_events", "Spans counted by an SLO (every span, before sampling)", ["slo"])
# SLI aggregates (every span, before sampling), added per emitted window; labels bounded by
# sli.max_services × span kinds × statuses (operations stay on sli.windows: too many for labels)
SLI_SPANS = Counter("tailsift_sli_spans", "Spans counted into SLI windows", ["service", "span_kind", "status"])
SLI_LATENCY_SUM = Counter(
    "tailsift_sli_latency_seconds",
    "Sum of span latencies counted into SLI windows (÷ tailsift_sli_spans_total = mean)",
    ["service", "span_kind", "status"],
)
GRAPH_REQUESTS = Counter(
    "tailsift_service_graph_requests",
    "Calls between services (client → server span pairs, every trace before sampling)",
    ["client", "server"],
)
GRAPH_SERVER_SECONDS = Counter(
    "tailsift_service_graph_request_server_seconds",
    "Sum of callee (server/consumer span) latencies per edge (÷ tailsift_service_graph_requests_total = mean)",
    ["client", "server"],
)
GRAPH_FAILED = Counter(
    "tailsift_service_graph_request_failed",
    "Calls between services where either side has ERROR status",
    ["client", "server"],
)
SLO_BAD_EVENTS = Counter(
    "tailsift_slo_bad_events", "Spans an SLO counts as bad (error, or slower than its threshold)", ["slo"]
)
FLUSH_SECONDS = Histogram(
    "tailsift_flush_seconds",
    "Time one commit takes: closing windows, producing them, sending the offsets, committing",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STEP_SECONDS = Histogram(
    "tailsift_step_seconds",
    "Time one loop step takes after consume() returned: ingest, decide what is due, produce it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DECISION_LATENCY = Histogram(
    "tailsift_decision_latency_seconds",
    "From a trace's decision point to its outputs written (committed)",
    # fine around a commit interval (0.5-1 s) plus the 250 ms the target allows: a p99 read off
    # the coarse 0.5/1/2 s buckets was interpolated over a whole second
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.625, 0.75, 0.875, 1, 1.125, 1.25, 1.5, 2, 2.5, 5, 10, 30),
)
BACKPRESSURE_SECONDS = Counter(
    "tailsift_backpressure_seconds", "Time the input partitions were paused at the memory bound"
)
INPUT_LAG = Gauge(
    "tailsift_input_lag_messages",
    "Messages of the owned input partitions not yet read (librdkafka's cached end offsets − position)",
)
REWINDS = Counter(
    "tailsift_rewinds",
    "Failed transactions or writes after which the worker rewound to its committed offsets",
)
PRODUCERS_REPLACED = Counter(
    "tailsift_producers_replaced",
    "Transactions the coordinator aborted for running past transaction_timeout_ms, after which a new "
    "producer took over the worker's transactional id (pipeline.kafka.producer)",
)
PAUSED = Gauge("tailsift_input_paused", "1 while the input is paused at the memory bound")
BUFFERED_BYTES = Gauge("tailsift_bytes_buffered", "Raw bytes of spans buffered awaiting a decision")
RESTORE_SECONDS = Histogram(
    "tailsift_decision_restore_seconds",
    "Time to restore decisions on partition assignment",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
FOLLOW_LINKS = Counter(
    "tailsift_follow_links",
    "Span links from kept traces to other traces, by outcome "
    "(kept: the linked trace was still buffered here and is kept; already_kept; too_late: already "
    "dropped; not_here: unknown to this worker when it was decided; dropped_by_policy: a drop policy "
    "dropped it, which wins over links)",
    ["outcome"],
)


class MetricsPortInUse(Exception):
    """The /metrics port cannot be bound (typically: another worker on this host has it)."""


def serve(port: int, host: str) -> None:
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise MetricsPortInUse(
            f"cannot serve /metrics on {host}:{port} ({exc.strerror or exc}); another process (a second "
            "worker on this host?) has it: give each worker its own metrics.port, or metrics.port: 0 to "
            "turn the endpoint off"
        ) from None
