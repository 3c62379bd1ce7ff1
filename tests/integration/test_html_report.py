"""`tailsift report --html` on the real broker, opened in a real headless Chromium.

The job and the aggregation stage process generated traffic; the CLI writes the report from the
live topics and the job's /metrics; Debian's chromium (installed by deploy/local/chromium when
missing) opens the file. The page must log no console error, make no request but for the file
itself, draw every chart, look like something (the screenshot's pixels vary), and embed numbers
equal to what this test reads from the topics itself and to the generator's ground truth."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections import Counter

import pytest
from PIL import Image, ImageStat

from pipeline.aggregate.proc import AggregateProcess
from pipeline.codecs import avro
from pipeline.demo import merged_span_total, run_config
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.htmlreport.browser import SETUP_SCRIPT, visit
from pipeline.jobproc import JobProcess
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def chromium() -> None:
    """The project's own setup installs the browser where it is missing (as root); anything else is
    a failure that says what to run, never a skip."""
    done = subprocess.run([str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"{SETUP_SCRIPT} failed ({done.returncode}): {done.stderr.strip()}")


def test_live_html_report_in_headless_chromium(kafka_bootstrap, unique_name, tmp_path, chromium):
    path, cfg = run_config(
        kafka_bootstrap,
        f"html-{unique_name}",
        tmp_path,
        assemble={"decision_wait_ms": 1500},
        sli={"window_seconds": 2, "grace_seconds": 1},
        slo={"objectives": [{"name": "checkout-avail", "service": "checkout", "objective_percent": 99}]},
        # the stage's grace need only cover sli.grace_seconds + a commit interval here (one worker, one
        # clock): its default 15 s + 10 s idle was most of the wait for the last merged windows
        aggregate={"grace_seconds": 3, "idle_seconds": 3, "tick_ms": 200},
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    report = tmp_path / "report.html"
    traces = []
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    stage = AggregateProcess(path, cfg.aggregate.web_host, cfg.aggregate.web_port, tmp_path / "aggregate.log").start()
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        stage.wait_ready()
        stats = produce(
            cfg.kafka.bootstrap_servers,
            cfg.topics.spans_raw.name,
            count=400,
            duration_s=None,
            rate=None,
            config=GeneratorConfig(seed=61, error_rate=0.1, slow_rate=0.05),
            progress=False,
            on_trace=traces.append,
        )
        job.wait_drained(stats.spans)
        stage.wait_idle(1)
        assert merged_span_total(cfg, stats.spans) == stats.spans
        cli = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "report", "-c", str(path), "--html", str(report)]
            + ["--metrics-url", job.metrics_url, "--timeout", "20"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert cli.returncode == 0, cli.stderr
    finally:
        job.stop()
        stage.stop()

    page = visit(report)
    assert page.errors == [], page.errors
    assert page.foreign_requests == [], page.foreign_requests
    assert page.requests == [page.url]
    figures = len(re.findall(r'class="plotly-graph-div"', report.read_text()))
    assert (
        page.charts == figures >= 8
    )  # every figure drawn: throughput, share, latency, errors, 2 SLO, graph, waterfalls
    shot = Image.open(io.BytesIO(page.screenshot_png)).convert("L")
    assert shot.size[0] >= 1000
    assert ImageStat.Stat(shot).stddev[0] > 20  # a blank (or single-colour) page has ~0

    data = page.data
    # what the test reads from the topics itself
    kept_ids, kept_spans = set(), 0
    for _, _, _, value in read_all(kafka_bootstrap, cfg.topics.traces_kept.name, 20):
        rec = avro.decode(avro.KEPT_TRACE, value)
        kept_ids.add(rec["trace_id"].hex())
        kept_spans += rec["span_count"]
    spans, errors = Counter(), Counter()
    for _, _, _, value in read_all(kafka_bootstrap, cfg.topics.sli_windows.name, 20):
        w = avro.decode(avro.SLI_WINDOW, value)
        spans[w["service"]] += w["span_count"]
        errors[w["service"]] += w["error_count"]
    assert data["totals"]["kept_traces"] == len(kept_ids) > 0
    assert data["totals"]["kept_spans"] == kept_spans
    assert {s: v["spans"] for s, v in data["per_service"].items()} == dict(spans)
    assert {s: v["errors"] for s, v in data["per_service"].items()} == dict(errors)
    # … and the generator's ground truth
    truth_spans, truth_errors = Counter(), Counter()
    for t in traces:
        truth_spans.update(t.spans_by_service)
        truth_errors.update(t.errors_by_service)
    assert dict(spans) == dict(truth_spans) and dict(errors) == {s: truth_errors.get(s, 0) for s in truth_spans}
    assert data["totals"]["input_spans"] == stats.spans
    assert sum(b["input_spans"] for b in data["timeline"]) == stats.spans
    assert sum(b["kept_spans"] for b in data["timeline"]) == kept_spans
    assert all(b["kept_spans"] <= b["input_spans"] for b in data["timeline"])  # one time axis for both
    assert data["totals"]["undecodable_records"] == {}
    assert sum(data["keep_share_by_policy"].values()) == len(kept_ids)

    # service graph: a request per span whose parent is in another service, failed when either is ERROR
    edges, failed = Counter(), Counter()
    for t in traces:
        by_id = {}
        for b in t.batches:
            for s in b["spans"]:
                by_id[s["span_id"]] = (b["service"], s)
        for service, s in by_id.values():
            parent = by_id.get(s["parent_span_id"])
            if parent is not None and parent[0] != service:
                edges[(parent[0], service)] += 1
                failed[(parent[0], service)] += "ERROR" in (s["status_code"], parent[1]["status_code"])
    got = {(e["client"], e["server"]): (e["requests"], e["failed"]) for e in data["service_graph"]["edges"]}
    assert got == {k: (n, failed[k]) for k, n in edges.items()}

    # SLO from the stage's slo.status: the whole run lies within every alert window
    checkout_spans, checkout_errors = truth_spans["checkout"], truth_errors["checkout"]
    [slo] = data["slo"]["objectives"]
    assert data["slo"]["source"] == "slo.status"
    assert slo["budget_remaining"] == pytest.approx(1 - (checkout_errors / checkout_spans) / 0.01)
    assert slo["burn_rates"]["1h"] == pytest.approx((checkout_errors / checkout_spans) / 0.01)

    # the waterfalls: an error, a slow one and a rare path, kept traces with their sampling facts
    assert [e["why"] for e in data["examples"]] == ["error", "slow", "rare"]
    for e in data["examples"]:
        assert e["trace_id"] in kept_ids and e["spans"]
        assert all(s["sampling"].get("sampling.policy") == e["policy"] for s in e["spans"])
    assert any(s["status"] == "ERROR" for s in data["examples"][0]["spans"])


def test_the_browser_check_sees_a_request_and_a_console_error(tmp_path, chromium):
    """The checks above can fail: a page that loads an image from elsewhere and logs an error is
    reported with both (connection refused still shows the request the page made)."""
    page = tmp_path / "leaky.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>leak</p><img src='http://127.0.0.1:9/pixel.png'>"
        "<script>console.error('boom')</script>"
        "<script type='application/json' id='tailsift-data'>{\"n\": 1}</script></body></html>"
    )
    v = visit(page, height=600)
    assert v.foreign_requests == ["http://127.0.0.1:9/pixel.png"]
    assert any("boom" in e["message"] for e in v.errors)
    assert v.data == {"n": 1} and v.charts == 0
