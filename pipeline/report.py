"""``tailsift report``: what the job wrote — kept traces by reason, dead letters, per-service SLIs.

``--html FILE`` writes the same topics (plus the aggregation stage's sli.merged and slo.status,
and the service graph from ``--metrics-url``) as one self-contained HTML page instead
(``pipeline.htmlreport``)."""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ddsketch import DDSketch

from operators.sli import sketch_from_record
from pipeline.codecs import avro, otlp
from pipeline.config import Config
from pipeline.readback import read_all


@dataclass
class ServiceSli:
    spans: int = 0
    errors: int = 0
    roots: int = 0
    windows: int = 0
    max_ms: float = 0.0
    sketch: DDSketch | None = None


@dataclass
class Report:
    kept_traces: set[bytes] = field(default_factory=set)
    kept_spans: int = 0
    kept_by_policy: Counter = field(default_factory=Counter)
    late_records: int = 0
    adjusted_total: float = 0.0
    deadletters: Counter = field(default_factory=Counter)
    sli: dict[str, ServiceSli] = field(default_factory=lambda: defaultdict(ServiceSli))
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def sli_spans(self) -> int:
        return sum(s.spans for s in self.sli.values())


def collect(config: Config, timeout: float = 10.0, metrics_url: str | None = None) -> Report:
    bootstrap, topics = config.kafka.bootstrap_servers, config.topics
    report = Report()
    for _, _, key, value in read_all(bootstrap, topics.traces_kept.name, timeout):
        fmt = config.emit.format
        trace = avro.decode(avro.KEPT_TRACE, value) if fmt == "avro" else otlp.kept_summary(key, value, fmt)
        report.kept_spans += trace["span_count"]
        if trace["late"]:
            report.late_records += 1
        elif trace["trace_id"] not in report.kept_traces:
            report.kept_by_policy[trace["policy"]] += 1
            report.adjusted_total += trace["adjusted_count"]
        report.kept_traces.add(trace["trace_id"])
    for _, _, _, value in read_all(bootstrap, topics.sli_windows.name, timeout):
        w = avro.decode(avro.SLI_WINDOW, value)
        s = report.sli[w["service"]]
        s.spans += w["span_count"]
        s.errors += w["error_count"]
        s.roots += w["root_count"]
        s.windows += 1
        s.max_ms = max(s.max_ms, w["latency_ms"]["max"])
        sketch = sketch_from_record(w["sketch"])
        if s.sketch is None:
            s.sketch = sketch
        else:
            s.sketch.merge(sketch)
    for _, _, _, value in read_all(bootstrap, topics.deadletter.name, timeout):
        report.deadletters[avro.decode(avro.DEAD_LETTER, value)["reason"]] += 1
    if metrics_url:
        report.metrics = scrape(metrics_url)
    return report


def scrape(url: str) -> dict[str, float]:
    """Sum a /metrics page's samples by name and label set (enough for the summary)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def _metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for k, v in metrics.items() if k.split("{")[0] == name and all(w in k for w in want))


def render(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    m = report.metrics
    summary = Table(title="tailsift summary", show_header=False)
    if m:
        summary.add_row("spans in", f"{_metric_sum(m, 'tailsift_spans_ingested_total'):,.0f}")
        decided = _metric_sum(m, "tailsift_traces_decided_total")
        kept = _metric_sum(m, "tailsift_traces_decided_total", decision="keep")
        summary.add_row(
            "traces decided", f"{decided:,.0f} (kept {kept:,.0f}, {100 * kept / decided if decided else 0:.1f}%)"
        )
    summary.add_row("spans in SLI windows", f"{report.sli_spans:,}")
    summary.add_row(
        "kept traces (traces.kept)",
        f"{len(report.kept_traces):,} ({report.kept_spans:,} spans, {report.late_records} late records)",
    )
    summary.add_row("traces they stand for (Σ adjusted count)", f"{report.adjusted_total:,.0f}")
    summary.add_row("dead letters", ", ".join(f"{r}: {n}" for r, n in report.deadletters.items()) or "0")
    console.print(summary)

    by_reason = Table(title="kept traces by deciding policy")
    by_reason.add_column("policy")
    by_reason.add_column("traces", justify="right")
    for policy, n in report.kept_by_policy.most_common():
        by_reason.add_row(policy, f"{n:,}")
    console.print(by_reason)

    sli = Table(title="per-service SLIs (all spans, before sampling)")
    for col in ("service", "spans", "errors", "error %", "p50 ms", "p95 ms", "p99 ms", "max ms", "windows"):
        sli.add_column(col, justify="left" if col == "service" else "right")
    for name in sorted(report.sli):
        s = report.sli[name]
        q = (lambda x: s.sketch.get_quantile_value(x) or 0.0) if s.sketch else (lambda x: 0.0)  # noqa: B023 - used in this iteration
        sli.add_row(
            name,
            f"{s.spans:,}",
            f"{s.errors:,}",
            f"{100 * s.errors / s.spans if s.spans else 0:.2f}",
            f"{q(0.5):.1f}",
            f"{q(0.95):.1f}",
            f"{q(0.99):.1f}",
            f"{s.max_ms:.1f}",
            str(s.windows),
        )
    console.print(sli)


def write_html(
    config: Config,
    path: str,
    timeout: float = 10.0,
    metrics_url: str | None = None,
    metrics: dict[str, float] | None = None,
) -> dict:
    """Read the live topics (and /metrics, or a scrape already taken) and write the HTML report to
    ``path``; returns the document the page embeds."""
    from pathlib import Path

    from pipeline.htmlreport import render_live
    from pipeline.htmlreport.live import collect_live

    doc = collect_live(config, timeout, metrics_url, metrics)
    Path(path).write_text(render_live(doc), encoding="utf-8")
    return doc


def main(config: Config, args: argparse.Namespace) -> int:
    if getattr(args, "html", None):
        doc = write_html(config, args.html, args.timeout, args.metrics_url)
        t = doc["totals"]
        print(
            f"tailsift report: wrote {args.html} ({t['kept_traces']:,} kept traces, {t['input_spans']:,} spans in "
            f"SLI windows, {len(doc['service_graph']['edges'])} service graph edges)"
        )
        return 0
    render(collect(config, args.timeout, args.metrics_url))
    return 0
