"""The live report's document: what the job and the aggregation stage wrote, read back from the
topics (read_committed) and optionally a job's /metrics.

Sources, each named in the document so the page can say where a figure comes from:

- ``traces.kept``: kept traces and spans, by deciding policy, per service, per window of span end
  time; the example waterfalls. Only protected output is read (the job tokenized PII before
  writing), and of the span attributes only the ``sampling.*`` / ``tailsift.*`` facts are shown.
- ``sli.merged`` (the aggregation stage's complete windows), or the partials on ``sli.windows``
  merged here when no stage ran: input spans, errors and latency quantiles per service per window.
- ``slo.status`` (the stage's latest status per SLO), or ``operators.slo`` run over the windows
  when the stage wrote none.
- ``/metrics``: the service graph (``tailsift_service_graph_*``, every trace before sampling).

``build_live`` is pure (records in, document out); ``collect_live`` does the reading."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from operators.sli import WindowAggregate
from operators.sli_merge import WindowKey, roll_up
from operators.slo import SloTracker, window_label

_NS_PER_MS = 1_000_000
MAX_EXAMPLE_SPANS = 300  # a waterfall taller than this is unreadable, and the page would grow without bound
MAX_RARE_PATHS = 1_000  # root paths whose first kept trace is held as a "rare path" candidate
_SHOWN_ATTRIBUTE_PREFIXES = ("sampling.", "tailsift.")


@dataclass
class KeptRecord:
    """One traces.kept record, in either emit format, with spans in the page's example shape."""

    trace_id: str
    policy: str
    reason: str
    adjusted_count: float
    late: bool
    spans: list[
        dict
    ]  # {"span_id", "parent_span_id", "service", "name", "start_ms", "duration_ms", "status", "sampling", "end_ns"}


def _span(
    service: str, span_id: bytes, parent: bytes | None, name: str, start_ns: int, end_ns: int, status: str, attrs
):
    return {
        "span_id": span_id.hex(),
        "parent_span_id": parent.hex() if parent else None,
        "service": service,
        "name": name,
        "start_ms": start_ns / _NS_PER_MS,
        "duration_ms": max(0.0, (end_ns - start_ns) / _NS_PER_MS),
        "status": status,
        "sampling": {k: v for k, v in (attrs or {}).items() if k.startswith(_SHOWN_ATTRIBUTE_PREFIXES)},
        "end_ns": end_ns,
    }


def kept_record_avro(value: bytes) -> KeptRecord:
    from pipeline.codecs import avro

    r = avro.decode(avro.KEPT_TRACE, value)
    spans = [
        _span(
            b["service"],
            s["span_id"],
            s["parent_span_id"],
            s["name"],
            s["start_time_unix_nano"],
            s["end_time_unix_nano"],
            s["status_code"],
            s["attributes"],
        )
        for b in r["batches"]
        for s in b["spans"]
    ]
    return KeptRecord(r["trace_id"].hex(), r["policy"], r["reason"], r["adjusted_count"], r["late"], spans)


def kept_record_otlp(key: bytes | None, value: bytes, fmt: str) -> KeptRecord:
    from pipeline.codecs import otlp

    req = otlp.parse_request(value, fmt)
    spans = []
    for rs in req.resource_spans:
        service = otlp.attrs_to_py(rs.resource.attributes).get("service.name", "")
        for ss in rs.scope_spans:
            for sp in ss.spans:
                status = {0: "UNSET", 1: "OK", 2: "ERROR"}.get(sp.status.code, "UNSET")
                attrs = otlp.attrs_to_py(sp.attributes)
                spans.append(
                    _span(
                        service,
                        sp.span_id,
                        sp.parent_span_id or None,
                        sp.name,
                        sp.start_time_unix_nano,
                        sp.end_time_unix_nano,
                        status,
                        attrs,
                    )
                )
    first = spans[0]["sampling"] if spans else {}
    trace_id = (key or b"").hex() or (req.resource_spans[0].scope_spans[0].spans[0].trace_id.hex() if spans else "")
    return KeptRecord(
        trace_id,
        str(first.get("sampling.policy", "")),
        str(first.get("sampling.reason", "")),
        float(first.get("sampling.adjusted_count", 1.0)),
        bool(first.get("sampling.late", False)),
        spans,
    )


def kept_records(
    messages: Iterable[tuple[bytes | None, bytes | None]], fmt: str, skipped: Counter, topic: str = "traces.kept"
) -> Iterable[KeptRecord]:
    """(key, value) pairs of traces.kept → records; one that does not decode in ``fmt`` is counted
    in ``skipped[topic]`` and left out (a report must not die on a stray record)."""
    for key, value in messages:
        if not value:
            continue
        try:
            yield kept_record_avro(value) if fmt == "avro" else kept_record_otlp(key, value, fmt)
        except Exception:  # noqa: BLE001 - fastavro/protobuf/json raise many types on foreign bytes
            skipped[topic] += 1


@dataclass
class _Examples:
    """Candidates for the waterfalls, held while streaming: the first kept error trace, the slowest
    trace so far, and the first trace of each root path (bounded) with how often that path was kept."""

    error: KeptRecord | None = None
    slow: KeptRecord | None = None
    slow_ms: float = -1.0
    path_first: dict[tuple[str, str], KeptRecord] = field(default_factory=dict)
    path_count: Counter = field(default_factory=Counter)

    def offer(self, rec: KeptRecord) -> None:
        if rec.late or not rec.spans:
            return
        roots = [s for s in rec.spans if s["parent_span_id"] is None] or rec.spans
        root = min(roots, key=lambda s: s["start_ms"])
        if self.error is None and any(s["status"] == "ERROR" for s in rec.spans):
            self.error = rec
        if root["duration_ms"] > self.slow_ms:
            self.slow, self.slow_ms = rec, root["duration_ms"]
        path = (root["service"], root["name"])
        if path not in self.path_first:
            if len(self.path_first) >= MAX_RARE_PATHS:
                return  # counts of paths beyond the bound are not kept either: memory stays bounded
            self.path_first[path] = rec
        self.path_count[path] += 1

    def chosen(self, rare_policies: set[str]) -> list[dict]:
        out: list[tuple[str, KeptRecord]] = []
        if self.error:
            out.append(("error", self.error))
        if self.slow:
            out.append(("slow", self.slow))
        taken = {r.trace_id for _, r in out}
        # the least often kept root path; a trace kept by a rare_path policy first when there is one
        ranked = sorted(
            (p for p, r in self.path_first.items() if r.trace_id not in taken),
            key=lambda p: (self.path_first[p].policy not in rare_policies, self.path_count[p], p),
        )
        if ranked:
            out.append(("rare", self.path_first[ranked[0]]))
        return [example(why, rec) for why, rec in out]


def example(why: str, rec: KeptRecord) -> dict:
    spans = sorted(rec.spans, key=lambda s: (s["start_ms"], s["span_id"]))[:MAX_EXAMPLE_SPANS]
    return {
        "trace_id": rec.trace_id,
        "why": why,
        "policy": rec.policy,
        "spans": [{k: v for k, v in s.items() if k != "end_ns"} for s in spans],
    }


def build_live(
    kept: Iterable[KeptRecord],
    windows: dict[WindowKey, WindowAggregate],
    *,
    window_s: float,
    sli_source: str,
    slo_status: list[dict] | None = None,
    slo_tracker: SloTracker | None = None,
    metrics: dict[str, float] | None = None,
    rare_policies: Iterable[str] = (),
    deadletters: dict[str, int] | None = None,
    subtitle: str = "",
) -> dict:
    window_ns = int(window_s * 1e9)
    kept_ids: set[str] = set()
    kept_spans = late_records = 0
    adjusted = 0.0
    by_policy: Counter = Counter()
    svc_kept_ids: dict[str, set[str]] = defaultdict(set)
    svc_kept_spans: Counter = Counter()
    bucket_kept_spans: Counter = Counter()
    bucket_policy: dict[int, Counter] = defaultdict(Counter)
    examples = _Examples()
    for rec in kept:
        kept_spans += len(rec.spans)
        for s in rec.spans:
            svc_kept_spans[s["service"]] += 1
            svc_kept_ids[s["service"]].add(rec.trace_id)
            bucket_kept_spans[s["end_ns"] - s["end_ns"] % window_ns] += 1
        if rec.late:
            late_records += 1
        elif rec.trace_id not in kept_ids:
            by_policy[rec.policy] += 1
            adjusted += rec.adjusted_count
            if rec.spans:
                end = max(s["end_ns"] for s in rec.spans)
                bucket_policy[end - end % window_ns][rec.policy] += 1
        kept_ids.add(rec.trace_id)
        examples.offer(rec)

    per_window = roll_up(windows, lambda k: (k[0], k[4]))  # (service, window start)
    per_service = roll_up(windows, lambda k: k[:1])
    bucket_input: Counter = Counter()
    series: dict[str, list[dict]] = defaultdict(list)
    for (service, start), w in sorted(per_window.items()):
        bucket_input[start] += w.span_count
        series[service].append(
            {
                "t_ms": start // _NS_PER_MS,
                "spans": w.span_count,
                "errors": w.error_count,
                "p50": w.quantile(0.5),
                "p90": w.quantile(0.9),
                "p99": w.quantile(0.99),
            }
        )
    buckets = sorted(set(bucket_input) | set(bucket_kept_spans) | set(bucket_policy))
    timeline = [
        {
            "t_ms": b // _NS_PER_MS,
            "input_spans": bucket_input.get(b, 0),
            "kept_spans": bucket_kept_spans.get(b, 0),
            "kept_by_policy": dict(sorted(bucket_policy.get(b, {}).items())),
        }
        for b in buckets
    ]
    services = sorted({k[0] for k in per_service} | set(svc_kept_spans))
    first_ns = min((k[4] for k in windows), default=0)
    last_ns = max((k[5] for k in windows), default=0)
    return {
        "kind": "live",
        "subtitle": subtitle,
        "window_s": window_s,
        "totals": {
            "input_spans": sum(w.span_count for w in per_service.values()),
            "input_errors": sum(w.error_count for w in per_service.values()),
            "kept_traces": len(kept_ids),
            "kept_spans": kept_spans,
            "late_records": late_records,
            "adjusted_count_sum": adjusted,
            "deadletters": dict(sorted((deadletters or {}).items())),
            "undecodable_records": {},
        },
        "timeline": timeline,
        "keep_share_by_policy": dict(sorted(by_policy.items())),
        "per_service": {
            s: {
                "spans": per_service[(s,)].span_count if (s,) in per_service else 0,
                "errors": per_service[(s,)].error_count if (s,) in per_service else 0,
                "kept_traces": len(svc_kept_ids.get(s, ())),
                "kept_spans": svc_kept_spans.get(s, 0),
            }
            for s in services
        },
        "latency": {"source": sli_source, "series": dict(series)},
        "slo": _slo(slo_status, slo_tracker),
        "service_graph": service_graph_from_metrics(metrics, (last_ns - first_ns) / 1e9),
        "examples": examples.chosen(set(rare_policies)),
    }


def _slo(status: list[dict] | None, tracker: SloTracker | None) -> dict:
    keep = ("slo", "service", "budget_remaining", "burn_rates", "firing")
    if status:
        return {"source": "slo.status", "objectives": [{k: s[k] for k in keep} for s in sorted(status, key=_by_slo)]}
    if tracker is not None and tracker.objectives:
        objectives = [
            {**{k: s[k] for k in keep}, "burn_rates": {window_label(w): r for w, r in s["burn_rates"].items()}}
            for s in tracker.status()
        ]
        return {"source": "computed from the SLI windows (operators/slo.py)", "objectives": objectives}
    return {"source": "none", "objectives": []}


def _by_slo(s: dict) -> str:
    return s["slo"]


def slo_from_windows(objectives: list, windows: dict[WindowKey, WindowAggregate]) -> SloTracker | None:
    """What the aggregation stage's SLO book would hold, from the windows the report read (when no
    stage wrote slo.status): each window fed once, in window-end order."""
    if not objectives:
        return None
    tracker = SloTracker(objectives)
    for k, w in sorted(windows.items(), key=lambda kv: kv[0][5]):
        tracker.observe(k[0], k[1], k[2], k[5], w.span_count, w.error_count, w.fold())
    return tracker


def service_graph_from_metrics(metrics: dict[str, float] | None, duration_s: float) -> dict:
    """Edges from a /metrics scrape (``pipeline.report.scrape`` keys: ``name{client=a,server=b}``);
    rates are per second of the input's event time the SLI windows cover."""
    if not metrics:
        return {"source": "none (pass --metrics-url of a running job)", "duration_s": duration_s, "edges": []}
    requests: Counter = Counter()
    failed: Counter = Counter()
    for key, value in metrics.items():
        name, _, labels = key.partition("{")
        if name not in ("tailsift_service_graph_requests_total", "tailsift_service_graph_request_failed_total"):
            continue
        lab = dict(part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part)
        edge = (lab.get("client", ""), lab.get("server", ""))
        (requests if name.endswith("requests_total") else failed)[edge] += value
    edges = [
        {
            "client": c,
            "server": s,
            "requests": int(n),
            "failed": int(failed.get((c, s), 0)),
            "requests_per_s": n / duration_s if duration_s > 0 else 0.0,
            "error_rate": failed.get((c, s), 0) / n if n else 0.0,
        }
        for (c, s), n in sorted(requests.items())
    ]
    return {"source": "/metrics (tailsift_service_graph_*)", "duration_s": duration_s, "edges": edges}


# ---------------------------------------------------------------------------------------------
# reading


def collect_live(
    config, timeout: float = 10.0, metrics_url: str | None = None, metrics: dict[str, float] | None = None
) -> dict:
    """Read the topics ``config`` names (and ``metrics_url``, or a scrape already taken: ``metrics``)
    into a live document."""
    from pipeline import slo_rules
    from pipeline.codecs import avro
    from pipeline.readback import read_all
    from pipeline.report import scrape
    from pipeline.sli_reader import merged_available, read_windows

    bootstrap, topics = config.kafka.bootstrap_servers, config.topics

    skipped: Counter = Counter()
    messages = ((k, v) for _, _, k, v in read_all(bootstrap, topics.traces_kept.name, timeout))

    merged = merged_available(config, timeout)
    windows = read_windows(config, timeout, "merged" if merged else "partials")
    status: dict[str, dict] = {}
    if merged:  # slo.status is written by the same stage; compacted, so the last record per SLO wins
        for _, _, key, value in read_all(bootstrap, topics.slo_status.name, timeout):
            if key and value:
                status[key.decode()] = json.loads(value)
    tracker = slo_from_windows(slo_rules.objectives(config), windows) if not status else None
    dl: Counter = Counter()
    for _, _, _, value in read_all(bootstrap, topics.deadletter.name, timeout):
        if value:
            try:
                dl[avro.decode(avro.DEAD_LETTER, value)["reason"]] += 1
            except Exception:  # noqa: BLE001 - as in kept_records
                skipped[topics.deadletter.name] += 1
    rare = {p.name for p in config.sampling.policies if getattr(p, "type", "") == "rare_path"}
    doc = build_live(
        kept_records(messages, config.emit.format, skipped, topics.traces_kept.name),
        windows,
        window_s=config.sli.window_seconds,
        sli_source=topics.sli_merged.name if merged else f"{topics.sli_windows.name} (partials merged here)",
        slo_status=list(status.values()),
        slo_tracker=tracker,
        metrics=scrape(metrics_url) if metrics_url else metrics,
        rare_policies=rare,
        deadletters=dl,
        subtitle=f"{bootstrap}, topics {topics.traces_kept.name}, {topics.sli_windows.name}; "
        f"read {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
    )
    doc["totals"]["undecodable_records"] = dict(skipped)  # known once the records were consumed
    return doc
