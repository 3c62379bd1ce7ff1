"""The HTML report renderer without Kafka or a browser: a hand-built simulation document (the
schema ``tailsift simulate --json`` writes) and a live document built from hand-made kept records
and SLI windows. The browser half (no console errors, no requests, pixels) is
tests/integration/test_html_report.py."""

from __future__ import annotations

import json
import re

import pytest
from ddsketch import DDSketch

from operators.sli import WindowAggregate
from pipeline.htmlreport import figures as F
from pipeline.htmlreport import render_live, render_simulation
from pipeline.htmlreport.live import KeptRecord, build_live, service_graph_from_metrics

HOSTILE = "</script><script>document.title='owned'</script>"
T0 = 1_700_000_000_000  # ms


def span(span_id, parent, service, name, start, dur, status="OK", sampling=None):
    return {
        "span_id": span_id,
        "parent_span_id": parent,
        "service": service,
        "name": name,
        "start_ms": float(start),
        "duration_ms": float(dur),
        "status": status,
        "sampling": sampling or {},
    }


def sim_config(name, kept, by_policy, recall_error, slow_kept):
    return {
        "name": name,
        "path": f"/tmp/{name}.yaml",
        "traces_seen": 1000,
        "spans_seen": 9000,
        "kept_traces": kept,
        "kept_spans": kept * 9,
        "kept_bytes": kept * 2048,
        "kept_spans_per_s": kept * 9 / 60.0,
        "kept_bytes_per_s": kept * 2048 / 60.0,
        "keep_share_by_policy": by_policy,
        "per_service": {"frontend": {"traces": 1000, "kept": kept}, "checkout": {"traces": 400, "kept": kept // 2}},
        "recall": {
            "error": {"seen": 50, "kept": recall_error},
            "slow": {"1000": {"seen": 20, "kept": slow_kept}, "250": {"seen": 80, "kept": 40}},
        },
        "dead_lettered": {"invalid_timestamp": 3},  # beyond the agreed schema: shown when present
        "adjusted_count_sum": 1000.0,
        "timeline": [
            {"t_ms": T0 + i * 10_000, "input_spans": 1500, "kept_spans": kept * 9 // 6, "kept_by_policy": by_policy}
            for i in range(6)
        ],
        "examples": [
            {
                "trace_id": "ab" * 16,
                "why": "error",
                "policy": "errors",
                "spans": [
                    span("01" * 8, None, "frontend", "GET /checkout", 0, 120, "ERROR", {"sampling.policy": "errors"}),
                    span("02" * 8, "01" * 8, "checkout", HOSTILE, 10, 90, "ERROR"),
                ],
            }
        ],
    }


def simulation_doc():
    return {
        "kind": "simulation",
        "input": {
            "source": "capture.tscap",
            "messages": 3000,
            "spans": 9000,
            "first_event_ms": T0,
            "last_event_ms": T0 + 60_000,
        },
        "configs": [
            sim_config("candidate", 120, {"errors": 50, "slow": 20, "baseline": 50}, 50, 20),
            sim_config("current", 100, {"errors": 45, "baseline": 55}, 45, 12),
        ],
        "diff": {
            "only_candidate": [
                {
                    "trace_id": "cd" * 16,
                    "root_service": "frontend",
                    "root_operation": "GET /",
                    "policy": "slow",
                    "reason": "latency",
                }
            ],
            "only_current": [],
            "more": 7,
        },
    }


def embedded(page: str) -> dict:
    blocks = re.findall(r'<script type="application/json" id="tailsift-data">(.*?)</script>', page, re.S)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def test_simulation_page_embeds_the_document_and_has_every_section():
    doc = simulation_doc()
    page = render_simulation(doc)
    assert embedded(page) == doc  # the hostile span name survives as data, inside the JSON block
    for section in ("summary", "timeline", "keep-share", "per-service", "recall", "diff", "examples-0", "examples-1"):
        assert f'<section id="{section}">' in page, section
    # the hostile name never closes a script: only as JSON-escaped text or HTML-escaped table text
    assert HOSTILE not in page and "<script>document.title" not in page
    assert page.count("</script>") == len(re.findall(r"<script[\s>]", page))
    # per-config figures side by side in the summary table, diff rows listed, plotly inlined once
    assert "<th>candidate</th><th>current</th>" in page
    assert "7 more not listed" in page and "cd" * 16 in page
    assert "<td>dead-lettered</td><td>3</td><td>3</td>" in page
    assert page.index("slow &gt; 250 ms") < page.index("slow &gt; 1000 ms")
    assert page.count("Plotly.newPlot(") >= 6
    assert len(re.findall(r"<script[^>]*\bsrc=", page)) == 0 and "<link" not in page


def test_simulation_figures_show_the_documents_numbers():
    doc = simulation_doc()
    recall = F.recall({c["name"]: c["recall"] for c in doc["configs"]})
    assert list(recall.data[0].x) == ["error", "slow > 250 ms", "slow > 1000 ms"]  # thresholds in numeric order
    assert list(recall.data[0].y) == [100.0, 50.0, 100.0]
    assert list(recall.data[1].y) == [90.0, 50.0, 60.0]
    share = F.keep_share_by_policy({c["name"]: c["keep_share_by_policy"] for c in doc["configs"]})
    assert list(share.data[0].x) == ["baseline", "errors", "slow"]
    assert list(share.data[1].y) == [55, 45, 0]
    rates = F.per_service_keep_rate({c["name"]: c["per_service"] for c in doc["configs"]})
    assert list(rates.data[1].y) == [12.5, 10.0]  # current: checkout 50 of 400, frontend 100 of 1000
    thr = F.throughput(
        {c["name"]: c["timeline"] for c in doc["configs"]}, F.bucket_seconds(doc["configs"][0]["timeline"])
    )
    assert list(thr.data[0].y) == [150.0] * 6  # 1500 input spans per 10 s bucket


def test_waterfall_orders_parents_before_children_and_keeps_spans_of_a_parent_cycle():
    spans = [
        span("c", "b", "db", "query", 30, 5),
        span("a", None, "frontend", "GET", 0, 100),
        span("b", "a", "api", "call", 10, 50),
        span("x", "y", "ghost", "loop1", 1, 1),  # x ↔ y: hostile input, no root
        span("y", "x", "ghost", "loop2", 2, 1),
    ]
    ordered = [(s["span_id"], d) for s, d in F.ordered_spans(spans)]
    assert ordered[:3] == [("a", 0), ("b", 1), ("c", 2)]
    assert sorted(ordered[3:]) == [("x", 0), ("y", 0)]
    fig = F.waterfall({"trace_id": "ab" * 16, "why": "slow", "policy": "slow", "spans": spans})
    assert list(fig.data[0].base[:3]) == [0.0, 10.0, 30.0]


def window(service, start_ms, spans, errors, latencies):
    sketch = DDSketch(0.01)
    for v in latencies:
        sketch.add(v)
    w = WindowAggregate(service, start_ms * 1_000_000, (start_ms + 5000) * 1_000_000, sketch)
    w.span_count, w.error_count = spans, errors
    return (service, "*", "*", "*", w.window_start_ns, w.window_end_ns), w


def kept(trace_id, policy, spans, late=False, adjusted=1.0):
    out = []
    for s in spans:
        s = dict(s, end_ns=int((s["start_ms"] + s["duration_ms"]) * 1_000_000))
        out.append(s)
    return KeptRecord(trace_id, policy, "r", adjusted, late, out)


def test_live_document_counts_kept_traces_per_policy_service_and_window():
    a = T0
    windows = dict(
        [
            window("frontend", a, 100, 3, [10, 20, 30]),
            window("frontend", a + 5000, 50, 0, [15]),
            window("api", a, 80, 8, [5, 500]),
        ]
    )
    records = [
        kept(
            "t1",
            "errors",
            [span("a", None, "frontend", "GET /a", a + 100, 40, "ERROR"), span("b", "a", "api", "x", a + 110, 20)],
        ),
        kept("t2", "baseline", [span("c", None, "frontend", "GET /b", a + 5100, 6000)], adjusted=20.0),
        kept("t1", "errors", [span("d", "a", "api", "late", a + 5200, 1)], late=True),
        kept("t3", "baseline", [span("e", None, "frontend", "GET /b", a + 200, 10)], adjusted=20.0),
        kept("t4", "baseline", [span("f", None, "api", "rare-op", a + 300, 10)], adjusted=20.0),
    ]
    metrics = {
        "tailsift_service_graph_requests_total{client=frontend,server=api}": 40.0,
        "tailsift_service_graph_request_failed_total{client=frontend,server=api}": 4.0,
        "tailsift_spans_ingested_total": 230.0,
    }
    doc = build_live(records, windows, window_s=5, sli_source="sli.windows", metrics=metrics, deadletters={"bad": 2})
    t = doc["totals"]
    assert (t["input_spans"], t["input_errors"], t["kept_traces"], t["kept_spans"], t["late_records"]) == (
        230,
        11,
        4,
        6,
        1,
    )
    assert t["adjusted_count_sum"] == 61.0 and t["deadletters"] == {"bad": 2}
    assert doc["keep_share_by_policy"] == {"baseline": 3, "errors": 1}
    assert doc["per_service"]["api"] == {"spans": 80, "errors": 8, "kept_traces": 2, "kept_spans": 3}
    assert doc["per_service"]["frontend"] == {"spans": 150, "errors": 3, "kept_traces": 3, "kept_spans": 3}
    assert [(b["input_spans"], b["kept_spans"], b["kept_by_policy"]) for b in doc["timeline"]] == [
        (180, 4, {"baseline": 2, "errors": 1}),
        (50, 1, {}),  # t2 ends in the third bucket; the late span in the second
        (0, 1, {"baseline": 1}),
    ]
    edge = doc["service_graph"]["edges"][0]
    assert (edge["requests"], edge["failed"], edge["error_rate"], edge["requests_per_s"]) == (40, 4, 0.1, 4.0)
    assert [e["why"] for e in doc["examples"]] == ["error", "slow", "rare"]
    # the first error trace, the slowest root, and of the rest the least often kept root path
    assert [e["trace_id"] for e in doc["examples"]] == ["t1", "t2", "t4"]
    assert all("end_ns" not in s for e in doc["examples"] for s in e["spans"])
    page = render_live(doc)
    assert embedded(page) == json.loads(json.dumps(doc))
    for section in ("summary", "throughput", "keep-share", "latency", "errors", "slo", "service-graph", "examples"):
        assert f'<section id="{section}">' in page, section


def test_service_graph_without_metrics_says_where_to_get_it():
    graph = service_graph_from_metrics(None, 10.0)
    assert graph["edges"] == [] and "--metrics-url" in graph["source"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_number_is_refused_rather_than_written_as_invalid_json(bad):
    doc = simulation_doc()
    doc["configs"][0]["adjusted_count_sum"] = bad
    with pytest.raises(ValueError):
        render_simulation(doc)


@pytest.mark.parametrize("emit", ["otlp_proto", "otlp_json"])
def test_kept_traces_read_the_same_from_avro_and_otlp_output(emit):
    """The waterfalls and counts of a job that emits OTLP are those of one that emits Avro: the
    same spans, services, parents, times, status and sampling facts, read from the job's own output."""
    from pipeline.htmlreport.live import kept_record_avro, kept_record_otlp
    from tests.spans import span as header
    from tests.support import jobs

    now = 1_700_000_000 * 1_000_000_000
    trace_id = bytes(range(16))
    root = header(now, now + 40 * jobs.MS, "ERROR", None, "GET /a", service="frontend", span_id=b"\x01" * 8)
    child = header(now + jobs.MS, now + 30 * jobs.MS, "OK", b"\x01" * 8, "SELECT", "CLIENT", "db", b"\x02" * 8)
    got = {}
    for fmt in ("avro", emit):
        job = jobs.make_job(emit={"format": fmt}, assemble={"root_quiet_gap_ms": 0})
        job.ingest(
            [
                jobs.received(0, trace_id, "frontend", [root]),
                jobs.received(1, trace_id, "db", [child]),
            ],
            now_ns=now,
        )
        out = job.collect(now + 2_000 * jobs.MS, flush_all_windows=True)
        [record] = jobs.records(out, job.kept_topic)
        rec = kept_record_avro(record.value) if fmt == "avro" else kept_record_otlp(record.key, record.value, fmt)
        got[fmt] = rec
    avro_rec, otlp_rec = got["avro"], got[emit]
    assert (otlp_rec.trace_id, otlp_rec.policy, otlp_rec.adjusted_count, otlp_rec.late) == (
        trace_id.hex(),
        "errors",
        1.0,
        False,
    )
    assert (avro_rec.trace_id, avro_rec.policy, avro_rec.reason) == (
        otlp_rec.trace_id,
        otlp_rec.policy,
        otlp_rec.reason,
    )
    key = lambda s: s["span_id"]  # noqa: E731
    assert sorted(otlp_rec.spans, key=key) == sorted(avro_rec.spans, key=key)
    assert [(s["service"], s["parent_span_id"], s["status"]) for s in sorted(avro_rec.spans, key=key)] == [
        ("frontend", None, "ERROR"),
        ("db", "01" * 8, "OK"),
    ]
    assert avro_rec.spans[0]["sampling"]["sampling.policy"] == "errors"


@pytest.mark.parametrize("fmt", ["avro", "otlp_proto", "otlp_json"])
def test_an_undecodable_kept_record_is_counted_and_left_out_not_fatal(fmt):
    from collections import Counter

    from pipeline.htmlreport.live import kept_records

    skipped = Counter()
    garbage = [(b"k" * 16, b"\xff\x00not a record\x80" * 3), (None, b"{"), (b"k", None)]
    assert list(kept_records(garbage, fmt, skipped, "t.kept")) == []
    assert skipped == {"t.kept": 2}  # the empty value (a tombstone) is no record at all


def test_slo_computed_from_the_windows_when_no_stage_wrote_slo_status():
    from operators.slo import Objective
    from pipeline.htmlreport.live import slo_from_windows

    windows = dict(
        [
            window("checkout", T0, 1000, 4, [10] * 10),
            window("checkout", T0 + 5000, 1000, 6, [10] * 10),
            window("cart", T0, 500, 50, [10]),  # another service: not counted
        ]
    )
    tracker = slo_from_windows([Objective("co", "checkout", 0.99)], windows)
    doc = build_live([], windows, window_s=5, sli_source="sli.windows", slo_tracker=tracker)
    [slo] = doc["slo"]["objectives"]
    assert doc["slo"]["source"].startswith("computed")
    assert slo["budget_remaining"] == pytest.approx(1 - (10 / 2000) / 0.01)  # half the budget spent
    assert slo["burn_rates"]["5m"] == pytest.approx(0.5) and slo["firing"] == []
    assert slo_from_windows([], windows) is None
