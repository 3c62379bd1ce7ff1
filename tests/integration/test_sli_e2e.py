"""SLIs on the real broker: per (service, operation, kind, status) counts merged from sli.windows
equal the generator's ground truth, quantiles within 1 %, SLO counters exact, `tailsift sli` works."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from operators.sli_merge import roll_up
from pipeline.demo import run_config
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.jobproc import JobProcess
from pipeline.privacy import build_protector
from pipeline.sli_reader import read_windows
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration
MS = 1_000_000


def test_sli_per_operation_exact_on_the_real_broker_and_tailsift_sli_reads_it(kafka_bootstrap, unique_name, tmp_path):
    path, cfg = run_config(
        kafka_bootstrap,
        f"sli-{unique_name}",
        tmp_path,
        assemble={"decision_wait_ms": 1500},
        sli={"window_seconds": 2, "grace_seconds": 1},
        slo={"objectives": [{"name": "checkout-avail", "service": "checkout", "objective_percent": 99}]},
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        traces = []
        stats = produce(
            cfg.kafka.bootstrap_servers,
            cfg.topics.spans_raw.name,
            count=500,
            duration_s=None,
            rate=None,
            config=GeneratorConfig(seed=44, error_rate=0.1, slow_rate=0.05),
            progress=False,
            on_trace=traces.append,
        )
        metrics = job.wait_drained(stats.spans)
    finally:
        job.stop()

    dimension = build_protector(cfg.privacy).dimension  # what the job applies to span names
    truth = defaultdict(lambda: [0, 0, []])
    for t in traces:
        for batch in t.batches:
            for s in batch["spans"]:
                row = truth[(batch["service"], dimension(s["name"]), s["kind"], s["status_code"])]
                row[0] += 1
                row[1] += s["status_code"] == "ERROR"
                row[2].append(max(0.0, (s["end_time_unix_nano"] - s["start_time_unix_nano"]) / MS))
    merged = roll_up(read_windows(cfg, timeout=10), lambda k: k[:4])
    assert set(merged) == set(truth)
    for key, (n, errors, lat) in truth.items():
        m = merged[key]
        assert (m.span_count, m.error_count) == (n, errors), key
        lat.sort()
        assert m.max_ms == lat[-1]
        for q in (0.5, 0.99):
            assert m.quantile(q) == pytest.approx(lat[int(q * (len(lat) - 1))], rel=0.01), (key, q)
    assert len(truth) > 30 and any(e for _, e, _ in truth.values())  # many dimensions, some errors

    checkout = [(n, e) for (svc, *_), (n, e, _) in truth.items() if svc == "checkout"]
    assert metrics["tailsift_slo_events_total{slo=checkout-avail}"] == sum(n for n, _ in checkout)
    assert metrics["tailsift_slo_bad_events_total{slo=checkout-avail}"] == sum(e for _, e in checkout)

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sli", "-c", str(path), "--by", "service", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["service"]: r for r in map(json.loads, out.stdout.splitlines())}
    want = defaultdict(int)
    for (svc, *_), (n, _, _) in truth.items():
        want[svc] += n
    assert {s: r["spans"] for s, r in rows.items()} == want
