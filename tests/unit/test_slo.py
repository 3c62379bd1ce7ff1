"""SLOs: burn rates and budgets from SLI windows, config validation, Prometheus rule generation."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from operators.sli import SliWindows
from operators.slo import BurnAlert, Objective, SloTracker, count_above, window_label
from pipeline import config as config_mod
from pipeline import slo_rules
from tests.spans import span

S = 1_000_000_000
MS = 1_000_000
MIN = 60 * S


def feed(tracker: SloTracker, windows: SliWindows) -> None:
    for w in windows.due(0, flush_all=True):
        tracker.observe(w.service, w.operation, w.span_kind, w.window_end_ns, w.span_count, w.error_count, w.fold())


def test_availability_burn_rates_and_budget():
    o = Objective("api-avail", "api", 0.99, alerts=(BurnAlert(3_600, 300, 14.4, "page"),), period_s=86_400)
    t = SloTracker([o])
    w = SliWindows(window_ns=10 * S, grace_ns=0)
    # 60 minutes: 1000 spans/min, 1 % errors (burn 1×); last 5 minutes 20 % errors (burn 20×)
    for minute in range(60):
        bad = 200 if minute >= 55 else 10
        w.add(0, "api", [span(minute * MIN, minute * MIN + MS, "ERROR" if i < bad else "UNSET") for i in range(1_000)])
    w.add(0, "other", [span(1, MS, "ERROR")])  # not selected
    feed(t, w)
    now = 60 * MIN
    assert t.burn_rate("api-avail", 300, now) == pytest.approx(20.0)
    assert t.burn_rate("api-avail", 3_600, now) == pytest.approx((55 * 10 + 5 * 200) / 60_000 / 0.01)
    assert t.budget_remaining("api-avail", now) == pytest.approx(1 - (1_550 / 60_000) / 0.01)
    (st,) = t.status(now)
    assert st["firing"] == [] and st["burn_rates"][300] == pytest.approx(20.0)  # 1 h burn is 2.6×: no page


def test_latency_objective_counts_spans_over_the_threshold_within_the_sketch_accuracy():
    o = Objective(
        "api-lat",
        "api",
        0.9,
        kind="latency",
        threshold_ms=300,
        operation="GET /users/{id}",
        alerts=(BurnAlert(600, 60, 1.5, "page"), BurnAlert(600, 60, 2.5, "ticket")),
    )
    t = SloTracker([o])
    w = SliWindows(window_ns=10 * S, grace_ns=0)
    lat = [50] * 700 + [290] * 100 + [310] * 150 + [1_000] * 50  # 200 of 1000 over 300 ms
    w.add(0, "api", [span(1, ms * MS, name=f"GET /users/{i}") for i, ms in enumerate(lat)])
    w.add(0, "api", [span(1, 5_000 * MS, name="POST /slow")])  # another operation: not selected
    feed(t, w)
    assert t.burn_rate("api-lat", 600, 10 * S) == pytest.approx(0.2 / 0.1)
    (st,) = t.status(10 * S)
    assert st["firing"] == ["page"]  # burning at 2×: above 1.5, below 2.5


def test_count_above_counts_the_threshold_bin_as_above():
    from ddsketch import DDSketch

    d = DDSketch(0.01)
    for v in (1, 10, 100, 296, 304, 1_000, 10_000):
        d.add(v)
    assert (
        count_above(d, 300) == 3
        and count_above(d, 303) == 3
        and count_above(d, 295) == 4
        and count_above(d, 0) == 7
        and count_above(d, 20_000) == 0
    )


def test_history_is_bounded_by_the_period():
    o = Objective("x", "api", 0.99, period_s=3_600, alerts=(BurnAlert(600, 60, 2.0, "page"),))
    t = SloTracker([o])
    for minute in range(600):
        t.observe("api", "op", "SERVER", minute * MIN, 10, 0, None)
    assert len(t._state["x"].buckets) <= 61


CONFIG = {
    "slo": {
        "objectives": [
            {"name": "checkout-availability", "service": "checkout", "objective_percent": 99.9},
            {
                "name": "frontend-latency",
                "service": "frontend",
                "operation": "GET /product/{id}",
                "span_kind": "SERVER",
                "type": "latency",
                "objective_percent": 99,
                "threshold_ms": 300,
                "period_days": 28,
                "alerts": [{"long_window": "1h", "short_window": "5m", "factor": 14.4, "severity": "page"}],
            },
        ]
    }
}


def test_config_validates_slos():
    cfg = config_mod.parse(CONFIG, "<test>")
    objs = slo_rules.objectives(cfg)
    assert [o.objective for o in objs] == [pytest.approx(0.999), pytest.approx(0.99)]
    assert len(objs[0].alerts) == 4 and objs[1].alerts == (BurnAlert(3_600, 300, 14.4, "page"),)
    assert objs[1].period_s == 28 * 86_400
    bad = {
        "slo": {
            "objectives": [
                {"name": "l", "service": "s", "type": "latency", "objective_percent": 99},
                {"name": "l", "service": "s", "objective_percent": 100},
            ]
        }
    }
    with pytest.raises(Exception) as err:
        config_mod.parse(bad, "<test>")
    assert "threshold_ms" in str(err.value) and "objective_percent" in str(err.value)


_DURATION = re.compile(r"^\d+[smhdwy]$")
_PROM_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def test_slo_rules_follow_the_prometheus_rule_file_format(tmp_path, capsys):
    cfg = config_mod.parse(CONFIG, "<test>")
    text = slo_rules.render(slo_rules.objectives(cfg))
    doc = yaml.safe_load(text)
    assert set(doc) == {"groups"} and len(doc["groups"]) == 2
    names = [g["name"] for g in doc["groups"]]
    assert len(set(names)) == len(names)
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert _PROM_NAME.match(rule["alert"]) and isinstance(rule["expr"], str)
            assert _DURATION.match(rule["for"])
            assert all(_PROM_NAME.match(k) and isinstance(v, str) for k, v in rule["labels"].items())
            assert all(isinstance(v, str) for v in rule["annotations"].values())
    page = doc["groups"][0]["rules"][0]
    sel = 'slo="checkout-availability"'
    burn = (
        "(sum(rate(tailsift_slo_bad_events_total{%s}[%s])) / sum(rate(tailsift_slo_events_total{%s}[%s]))) / 0.001"
        % (sel, "W", sel, "W")
    )
    assert page["expr"] == burn.replace("[W]", "[1h]") + " > 14.4\nand\n" + burn.replace("[W]", "[5m]") + " > 14.4"
    assert [r["alert"] for r in doc["groups"][1]["rules"]] == ["SLOBurnRatePage", "SLOErrorBudgetExhausted"]
    promtool = shutil.which("promtool")
    if promtool:  # installed on this machine (apt: prometheus): the real checker as well
        path = tmp_path / "rules.yml"
        path.write_text(text)
        proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_window_labels():
    assert [window_label(s) for s in (300, 3_600, 86_400, 90, 21_600)] == ["5m", "1h", "1d", "90s", "6h"]


def test_the_job_counts_slo_events_exactly_into_its_metrics():
    import os

    from prometheus_client import REGISTRY

    from pipeline.job import Received
    from tests.spans import batch_bytes
    from tests.support.jobs import make_job

    job = make_job(
        slo={
            "objectives": [
                {"name": "t-avail", "service": "a", "objective_percent": 99},
                {"name": "t-lat", "service": "a", "type": "latency", "objective_percent": 99, "threshold_ms": 100},
            ]
        },
    )

    def value(name, slo):
        return REGISTRY.get_sample_value(name, {"slo": slo}) or 0.0

    before = {
        (k, s): value(k, s)
        for k in ("tailsift_slo_events_total", "tailsift_slo_bad_events_total")
        for s in ("t-avail", "t-lat")
    }
    spans = [span(1, 5 * MS, "ERROR"), span(1, 500 * MS), span(1, 1 * MS), span(1, 2 * MS)]
    tid = os.urandom(16)
    job.ingest(
        [
            Received(0, 0, tid, batch_bytes(tid, "a", spans), 0),
            Received(0, 1, tid, batch_bytes(tid, "b", [span(1, 900 * MS, "ERROR")]), 1),
        ],
        now_ns=0,
    )
    job.collect(20 * S)

    def delta(k, s):
        return value(k, s) - before[(k, s)]

    assert delta("tailsift_slo_events_total", "t-avail") == 4 and delta("tailsift_slo_bad_events_total", "t-avail") == 1
    assert delta("tailsift_slo_events_total", "t-lat") == 4 and delta("tailsift_slo_bad_events_total", "t-lat") == 1
