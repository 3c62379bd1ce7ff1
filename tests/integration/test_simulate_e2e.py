"""Issue 16 acceptance: a generator topic with planted anomalies (errors, slow traces, the rare
rate-sync path), captured from a real broker with ``tailsift capture`` and replayed with
``tailsift simulate``: exact counts, recall against the generator's ground truth, byte-identical
output on a second run, and ``--against`` listing exactly the traces only the latency policy keeps."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic

from operators.policies.probabilistic import ProbabilisticPolicy
from operators.trace import TraceView
from pipeline import capture
from pipeline.cli import main as cli
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce

pytestmark = pytest.mark.integration

PARTITIONS = 4
ASSEMBLE = {"decision_wait_ms": 60_000, "root_quiet_gap_ms": 0}  # every span of a trace arrives first
ERRORS = {"name": "errors", "type": "status_code"}
SLOW = {"name": "slow", "type": "latency", "threshold_ms": 1000}
BASELINE = {"name": "baseline", "type": "probabilistic", "sampling_percentage": 5}


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every partition has a leader
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and all(p.leader >= 0 for p in md.partitions.values()):
            if len(md.partitions) == PARTITIONS:
                return
        time.sleep(0.2)
    raise AssertionError(f"topic {topic} not ready")


def write_config(path, policies, bootstrap: str) -> str:
    path.write_text(
        yaml.safe_dump(
            {"kafka": {"bootstrap_servers": bootstrap}, "assemble": ASSEMBLE, "sampling": {"policies": policies}}
        )
    )
    return str(path)


@pytest.fixture(scope="module")
def recorded(kafka_bootstrap, tmp_path_factory):
    """A generator topic (300 traces, seeded, event times 25 ms apart) and its ground truth."""
    topic = f"simulate-{int(time.time() * 1000) % 10**8}"
    create_topic(kafka_bootstrap, topic)
    truth = []
    start = time.time_ns() - 600 * 1_000_000_000  # ten minutes ago: replays of old data are fine
    ticks = itertools.count()
    stats = produce(
        kafka_bootstrap,
        topic,
        count=300,
        config=GeneratorConfig(seed=16, error_rate=0.06, slow_rate=0.05),
        progress=False,
        on_trace=truth.append,
        clock=lambda: start + next(ticks) * 25_000_000,
    )
    return topic, truth, stats, tmp_path_factory.mktemp("simulate")


def run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_capture_then_simulate_matches_the_ground_truth_twice_identically(recorded, kafka_bootstrap, capsys):
    topic, truth, stats, tmp = recorded
    data = tmp / "capture.avro"
    rc, _, err = run(
        ["capture", "--bootstrap", kafka_bootstrap, "--topic", topic, "--since", "1h", "--out", str(data)], capsys
    )
    assert rc == 0, err
    assert f"wrote {stats.messages:,} messages" in err
    msgs = list(capture.read_file(data))
    assert len(msgs) == stats.messages and sorted({m.partition for m in msgs}) == list(range(PARTITIONS))
    assert {m.key for m in msgs} == {t.trace_id for t in truth}
    assert capture.file_metadata(data)["topic"] == topic

    candidate = write_config(tmp / "candidate.yaml", [ERRORS, SLOW, BASELINE], kafka_bootstrap)
    outputs = []
    for i in range(2):
        rc, out, err = run(
            [
                "simulate",
                "-c",
                candidate,
                "--input",
                str(data),
                "--json",
                str(tmp / f"run{i}.json"),
                "--slow-ms",
                "1000",
            ],
            capsys,
        )
        assert rc == 0, err
        outputs.append((out, (tmp / f"run{i}.json").read_bytes()))
    assert outputs[0] == outputs[1]  # same input → the same table and the same JSON, byte for byte
    # and in another process, with another string hash seed (set and dict orders of str keys change)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "simulate", "-c", candidate, "--input", str(data)]
        + ["--json", str(tmp / "run2.json"), "--slow-ms", "1000"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, (tmp / "run2.json").read_bytes()) == outputs[0]

    result = json.loads(outputs[0][1])
    (c,) = result["configs"]
    errors = [t for t in truth if t.has_error]
    slow = [t for t in truth if t.duration_ns >= 1_000_000_000]
    assert errors and slow and any(t.flow == "rate-sync" for t in truth)
    assert result["input"]["messages"] == stats.messages and result["input"]["spans"] == stats.spans
    assert (c["traces_seen"], c["spans_seen"]) == (stats.traces, stats.spans)
    assert c["recall"]["error"] == {"seen": len(errors), "kept": len(errors)}
    assert c["recall"]["slow"]["1000"] == {"seen": len(slow), "kept": len(slow)}
    assert c["per_service"]["shipping"]["traces"] == sum(t.root_service == "shipping" for t in truth)

    assert "error recall" in outputs[0][0] and f"{len(errors)}/{len(errors)}" in outputs[0][0]

    # the topic read directly gives the same figures as its capture
    rc, out, err = run(["simulate", "-c", candidate, "--topic", topic, "--since", "1h"], capsys)
    assert rc == 0, err
    assert out.splitlines()[1:] == outputs[0][0].splitlines()[1:]


def test_against_a_config_without_the_latency_policy_lists_the_slow_non_error_traces(recorded, kafka_bootstrap, capsys):
    topic, truth, stats, tmp = recorded
    data = tmp / "against.avro"
    rc, _, err = run(
        ["capture", "--bootstrap", kafka_bootstrap, "--topic", topic, "--since", "1h", "--out", str(data)], capsys
    )
    assert rc == 0, err
    candidate = write_config(tmp / "c.yaml", [ERRORS, SLOW, BASELINE], kafka_bootstrap)
    current = write_config(tmp / "p.yaml", [ERRORS, BASELINE], kafka_bootstrap)
    out_json = tmp / "diff.json"
    rc, out, err = run(
        ["simulate", "-c", candidate, "--against", current, "--input", str(data), "--json", str(out_json)]
        + ["--html", str(tmp / "diff.html")],
        capsys,
    )
    assert rc == 0, err
    doc = json.loads(out_json.read_text())
    diff = doc["diff"]
    # the page embeds the very document the JSON holds (what its charts and tables are drawn from)
    page = (tmp / "diff.html").read_text()
    blocks = re.findall(r'<script type="application/json" id="tailsift-data">(.*?)</script>', page, re.S)
    assert len(blocks) == 1 and json.loads(blocks[0]) == doc
    baseline = ProbabilisticPolicy("baseline", 5)
    picked = {
        t.trace_id
        for t in truth
        if baseline.evaluate(TraceView(t.trace_id, [s for b in t.batches for s in b["spans"]])).sampled
    }
    expected = sorted(
        t.trace_id.hex()
        for t in truth
        if t.duration_ns >= 1_000_000_000 and not t.has_error and t.trace_id not in picked
    )
    assert expected
    assert [e["trace_id"] for e in diff["only_candidate"]] == expected
    assert diff["only_current"] == [] and diff["more"] == 0
    assert all(e["policy"] == "slow" for e in diff["only_candidate"])
    for trace_id in expected:
        assert trace_id in out


def test_capture_errors_say_what_is_wrong(recorded, kafka_bootstrap, capsys):
    topic, _, stats, tmp = recorded
    rc, _, err = run(
        [
            "capture",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            "no-such-topic-x",
            "--since",
            "1h",
            "--out",
            str(tmp / "x"),
        ],
        capsys,
    )
    assert rc == 2 and "'no-such-topic-x' does not exist" in err and not (tmp / "x").exists()
    future = int(time.time() * 1000) + 3_600_000
    rc, _, err = run(
        [
            "capture",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            topic,
            "--from-ms",
            str(future),
            "--out",
            str(tmp / "y"),
        ],
        capsys,
    )
    assert rc == 1 and "no messages" in err and not (tmp / "y").exists()
    # offsets: partition 0's first five messages; --max-bytes stops early and says so
    rc, _, err = run(
        ["capture", "--bootstrap", kafka_bootstrap, "--topic", topic, "--offsets", "0:0-5", "--out", str(tmp / "o")],
        capsys,
    )
    assert rc == 0, err
    assert [(m.partition, m.offset) for m in capture.read_file(tmp / "o")] == [(0, i) for i in range(5)]
    rc, _, err = run(
        ["capture", "--bootstrap", kafka_bootstrap, "--topic", topic, "--since", "1h", "--max-bytes", "20000"]
        + ["--out", str(tmp / "m")],
        capsys,
    )
    assert rc == 0 and "stopped at --max-bytes 20,000" in err
    kept = list(capture.read_file(tmp / "m"))
    assert 0 < len(kept) < stats.messages
    assert sum(len(m.key or b"") + len(m.value or b"") + capture.MESSAGE_OVERHEAD for m in kept) <= 20_000


def test_a_capture_cut_short_is_a_time_prefix_of_every_partition(kafka_bootstrap, unique_name, tmp_path, capsys):
    """Partitions are read together and handed out in step by message time: a capture stopped by
    --max-bytes holds the first seconds of every partition, not all of partition 0 and nothing else
    (what reading one partition after the other gave)."""
    from confluent_kafka import Producer

    topic = f"capture-prefix-{unique_name}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    base = int(time.time() * 1000) - 600_000
    for p in range(3):  # one partition after the other, each 20 s of message time
        for i in range(200):
            producer.produce(topic, b"v" * 200, b"k%d" % i, partition=p, timestamp=base + i * 100 + p * 7)
    assert producer.flush(30) == 0
    out = tmp_path / "prefix.avro"
    max_bytes = (200 + 3 + capture.MESSAGE_OVERHEAD) * 150  # ~150 of the 600 messages
    rc, _, err = run(
        ["capture", "--bootstrap", kafka_bootstrap, "--topic", topic, "--since", "1h", "--max-bytes", str(max_bytes)]
        + ["--out", str(out)],
        capsys,
    )
    assert rc == 0 and "stopped at --max-bytes" in err, err
    got: dict[int, list] = {p: [] for p in range(3)}
    for m in capture.read_file(out):
        got[m.partition].append(m)
    assert sum(map(len, got.values())) >= 140
    for p, ms in got.items():
        assert [m.offset for m in ms] == list(range(len(ms))), p  # a prefix of each partition
    newest = [ms[-1].timestamp_ms for ms in got.values()]
    assert max(newest) - min(newest) <= capture.ALIGN_MS + 100
