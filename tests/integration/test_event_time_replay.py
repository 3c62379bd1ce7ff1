"""Event-time mode: two replays of the same recorded topic yield identical decision logs.

One recorded input topic (generated traffic with a fixed seed, produced once), drained twice by
two independent jobs (own consumer groups, own output topics). With `assemble.time: event`,
decision points follow span end times and per-partition watermarks, so what is decided, with
which spans, and at which (event) time depends only on the recorded data — not on batching,
worker speed or when the job happened to run."""

from __future__ import annotations

from collections import defaultdict

import pytest
import yaml

from pipeline import config as config_mod
from pipeline.codecs import avro
from pipeline.demo import run_config
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.jobproc import JobProcess
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration

ZERO = bytes(16)


def decision_log(cfg) -> dict[int, list[tuple]]:
    """Per decision-log partition, the decisions in log order (checkpoints excluded: they carry the
    worker clock and the transaction boundaries)."""
    out: dict[int, list[tuple]] = defaultdict(list)
    for p, _, _, value in read_all(cfg.kafka.bootstrap_servers, cfg.topics.decisions.name, timeout=60):
        d = avro.decode(avro.TRACE_DECISION, value)
        if d["trace_id"] == ZERO:
            continue
        out[p].append(
            (
                d["trace_id"].hex(),
                d["keep"],
                d["policy"],
                d["reason"],
                d["probability"],
                d["decided_at_unix_nano"],
                tuple(d["emitted_offsets"]),
            )
        )
    return dict(out)


def test_two_replays_of_a_recorded_topic_decide_identically(kafka_bootstrap, unique_name, tmp_path):
    overrides = dict(
        assemble={
            "time": "event",
            "decision_wait_ms": 2000,
            "root_quiet_gap_ms": 500,
            "allowed_lateness_ms": 200,
            "idle_partition_ms": 2000,
        },
        sampling={
            "policies": [
                {"name": "errors", "type": "status_code"},
                {"name": "slow", "type": "latency", "threshold_ms": 800},
                {"name": "baseline", "type": "probabilistic", "sampling_percentage": 10},
            ]
        },
        # small batches for one run, large for the other: decisions must not depend on batching
    )
    configs = []
    for run, batch in (("a", 7), ("b", 500)):
        (tmp_path / run).mkdir()
        path, cfg = run_config(
            kafka_bootstrap, f"et{run}-{unique_name}", tmp_path / run, job={"batch_max_messages": batch}, **overrides
        )
        configs.append((path, cfg))
    # both runs read the same recorded input topic (run a's)
    recorded = configs[0][1].topics.spans_raw.name
    path_b, cfg_b = configs[1]
    data = yaml.safe_load(path_b.read_text())
    data["topics"]["spans_raw"]["name"] = recorded
    path_b.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg_b = config_mod.load(path_b)
    configs[1] = (path_b, cfg_b)
    for _, cfg in configs:
        create_topics(cfg)

    # ~6 s of traffic in event time, produced as fast as possible (event time ≠ wall time)
    stats = produce(
        kafka_bootstrap,
        recorded,
        count=600,
        duration_s=None,
        rate=None,
        config=GeneratorConfig(seed=21, error_rate=0.1),
        progress=False,
    )

    logs = []
    for path, cfg in configs:
        job = JobProcess(path, cfg.metrics.port, path.parent / "job.log").start()
        try:
            job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
            job.wait_drained(stats.spans, timeout=180)
            decided = job.metric("tailsift_traces_decided_total")
            memory_bound = job.metric("tailsift_decision_points_total", trigger="memory_bound")
        finally:
            job.stop()
        assert decided == stats.traces and memory_bound == 0
        logs.append(decision_log(cfg))

    a, b = logs
    assert sum(len(v) for v in a.values()) >= stats.traces  # every trace decided (late updates add records)
    diffs = []
    for p in sorted(set(a) | set(b)):
        x, y = a.get(p, []), b.get(p, [])
        for i, (u, v) in enumerate(zip(x, y)):
            if u != v:
                diffs.append(f"partition {p} record {i}: {u} != {v}")
                break
        else:
            if len(x) != len(y):
                diffs.append(f"partition {p}: {len(x)} vs {len(y)} records")
    assert not diffs, "event-time replays decided differently:\n" + "\n".join(diffs)
    kept = {d[0] for part in a.values() for d in part if d[1]}
    assert 0 < len(kept) < stats.traces
