"""The sampling engine end to end: a YAML config of several policies through `tailsift run` on a
real broker; which traces reach traces.kept, and how they are annotated."""

from __future__ import annotations

import pytest

from operators import randomness
from operators.tracestate import ot_fields
from pipeline.codecs import avro
from pipeline.demo import run_config
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.jobproc import JobProcess
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration

POLICIES = [
    # drop the carrier-rate sync job (root service shipping), even when it fails: drop wins
    {
        "name": "rules",
        "type": "rules_based",
        "rules": [
            {
                "name": "no-rate-sync",
                "drop": True,
                "conditions": [{"field": "root.service.name", "operator": "=", "value": "shipping"}],
            }
        ],
    },
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
    {"name": "baseline", "type": "probabilistic", "sampling_percentage": 10},
]


def test_policies_decide_and_annotate_through_the_real_job(kafka_bootstrap, unique_name, tmp_path):
    path, cfg = run_config(
        kafka_bootstrap,
        f"it-pol-{unique_name}",
        tmp_path,
        # all 600 traces are produced at once: on a starved 2-core machine reading one trace's
        # messages (interleaved with the others') can take longer than a short decision wait, and a
        # tail read after its decision is a late record — which this test must not mistake for a
        # policy fault. The wait is on the worker clock from the first span read, so 5 s covers it.
        assemble={"decision_wait_ms": 5000, "root_quiet_gap_ms": 0},
        sli={"window_seconds": 2, "grace_seconds": 1},
        sampling={"mode": "any_match", "policies": POLICIES},
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        traces = []
        stats = produce(
            cfg.kafka.bootstrap_servers,
            cfg.topics.spans_raw.name,
            count=600,
            duration_s=None,
            rate=None,
            config=GeneratorConfig(seed=23, error_rate=0.1),
            progress=False,
            on_trace=traces.append,
        )
        job.wait_drained(stats.spans)
    finally:
        job.stop()

    kept = {}
    for _, _, key, value in read_all(cfg.kafka.bootstrap_servers, cfg.topics.traces_kept.name):
        trace = avro.decode(avro.KEPT_TRACE, value)
        assert not trace["late"]
        kept[key] = trace

    th10 = randomness.threshold(0.10)
    expected = {}
    for t in traces:
        if t.root_service == "shipping":
            continue
        if t.has_error:
            expected[t.trace_id] = ("errors", 1.0)
        elif randomness.randomness(t.trace_id) >= th10:
            expected[t.trace_id] = ("baseline", 10.0)
    assert sum(t.root_service == "shipping" for t in traces) >= 10
    assert sum(p == "errors" for p, _ in expected.values()) >= 30
    assert sum(p == "baseline" for p, _ in expected.values()) >= 20
    assert set(kept) == set(expected)
    for tid, (policy, adjusted) in expected.items():
        trace = kept[tid]
        assert trace["policy"] == policy and trace["adjusted_count"] == pytest.approx(adjusted)
        for batch in trace["batches"]:
            for span in batch["spans"]:
                attrs = span["attributes"]
                assert attrs["sampling.policy"] == policy
                assert attrs["sampling.adjusted_count"] == pytest.approx(adjusted)
                assert attrs["sampling.reason"] == trace["reason"]
                th = ot_fields(span["trace_state"]).get("th")
                if policy == "baseline":  # OTEP 235: the consistent threshold of the 10 % keep
                    assert th == randomness.threshold_hex(th10)
                else:
                    assert th is None
