"""The aggregation stage's ``/metrics``: what Grafana reads of the merged, exact windows.

The workers export counters (spans, errors, latency sums) that Prometheus can add up; what it
cannot do is merge latency sketches, so percentiles over all workers exist only here, where the
partials are merged. Rendered at scrape time from the stage's own state (the newest merged windows
it keeps for ``/sli`` and the SLO book), so a restart that rebuilds that state from ``sli.merged``
shows the same values instead of counters that jump by the whole history.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from operators.sli import merged_sketch, sketch_from_record
from pipeline.aggregate.slo_book import SloBook

QUANTILES = (0.5, 0.9, 0.99)


class MergedSliCollector(Collector):
    """Per service, the newest merged window it has: spans, errors and latency quantiles from the
    sketches of all its operations, kinds and statuses merged; per SLO, budget and burn rates."""

    def __init__(self, recent: Iterable[dict[str, Any]], book: SloBook):
        self.recent = recent
        self.book = book

    def collect(self) -> Iterator[GaugeMetricFamily]:
        latency = GaugeMetricFamily(
            "tailsift_merged_latency_ms",
            "Span latency quantile of the newest merged SLI window, all workers (exact DDSketch merge)",
            labels=["service", "quantile"],
        )
        spans = GaugeMetricFamily(
            "tailsift_merged_window_spans", "Spans in the newest merged SLI window, all workers", labels=["service"]
        )
        errors = GaugeMetricFamily(
            "tailsift_merged_window_errors", "Error spans in the newest merged SLI window", labels=["service"]
        )
        end = GaugeMetricFamily(
            "tailsift_merged_window_end_seconds", "Event-time end of the newest merged SLI window", labels=["service"]
        )
        for service, (end_ns, n, n_err, sketch) in sorted(newest_windows(self.recent).items()):
            spans.add_metric([service], n)
            errors.add_metric([service], n_err)
            end.add_metric([service], end_ns / 1e9)
            if sketch is not None and sketch.count:
                for q in QUANTILES:
                    latency.add_metric([service, str(q)], sketch.get_quantile_value(q))
        yield from (latency, spans, errors, end)

        budget = GaugeMetricFamily(
            "tailsift_slo_budget_remaining", "Error budget remaining (1 = untouched, < 0 = overspent)", labels=["slo"]
        )
        burn = GaugeMetricFamily(
            "tailsift_slo_burn_rate", "Error-budget burn rate per alert window", labels=["slo", "window"]
        )
        firing = GaugeMetricFamily(
            "tailsift_slo_firing",
            "1 while an alert severity's long and short windows both burn too fast",
            labels=["slo", "severity"],
        )
        for s in self.book.status():
            budget.add_metric([s["slo"]], s["budget_remaining"])
            for window, rate in s["burn_rates"].items():
                burn.add_metric([s["slo"], window], rate)
            for severity in s["firing"]:
                firing.add_metric([s["slo"], severity], 1)
        yield from (budget, burn, firing)


def newest_windows(records: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int, int, Any]]:
    """service → (window end, spans, errors, merged sketch) of its newest window among ``records``
    (merged SLI window records; a window's late parts are separate records and add up here too)."""
    newest: dict[str, tuple[int, int, int, Any]] = {}
    for r in records:
        service, end_ns = r["service"], r["window_end_unix_nano"]
        have = newest.get(service)
        if have is not None and have[0] > end_ns:
            continue
        sketch = sketch_from_record(r["sketch"]) if r.get("sketch") else None
        if have is None or have[0] < end_ns:
            newest[service] = (end_ns, r["span_count"], r["error_count"], sketch)
            continue
        merged = have[3]
        if merged is None:
            merged = sketch
        elif sketch is not None:
            merged = merged_sketch(merged, sketch)  # equal accuracies exactly, else into the coarser
        newest[service] = (end_ns, have[1] + r["span_count"], have[2] + r["error_count"], merged)
    return newest


def registry(recent: Iterable[dict[str, Any]], book: SloBook) -> CollectorRegistry:
    """A registry of its own: the stage's process has no job metrics to mix in."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MergedSliCollector(recent, book))
    return reg
