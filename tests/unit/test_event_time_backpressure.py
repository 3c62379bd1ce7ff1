"""Event time with `overflow: backpressure`: pausing the input freezes the watermarks, so at the
memory bound the job seals the oldest-deadline traces instead of stalling until idle_partition."""

from __future__ import annotations

import os

from pipeline import config
from pipeline.codecs import avro
from pipeline.job import Job, Received
from tests.spans import batch_bytes, span

MS = 1_000_000
S = 1_000 * MS
NOW = 1_700_000_000 * S


def make_job():
    cfg = config.parse(
        {
            "job": {"processing_guarantee": "at_least_once"},
            "privacy": {"enabled": False},
            "assemble": {
                "time": "event",
                "overflow": "backpressure",
                "max_buffered_spans": 10,
                "decision_wait_ms": 1000,
                "root_quiet_gap_ms": 0,
                "allowed_lateness_ms": 0,
                "idle_partition_ms": 10_000,
            },
            "sampling": {"policies": [{"name": "all", "type": "always_sample"}]},
        }
    )
    return Job(cfg, worker_id="test")


def test_at_the_bound_the_oldest_deadlines_are_sealed_down_to_the_resume_mark_instead_of_stalling():
    """Old code: at the bound the input paused, the watermarks froze and collect() decided nothing
    until idle_partition_ms (observed: 0 decisions at +100 ms, the input stayed paused), then
    everything at once. Now collect() seals the 5 oldest-deadline traces (12 → 7 spans buffered,
    under the 80 % resume mark) as memory_bound, and the input can resume."""
    job = make_job()
    traces = [os.urandom(16) for _ in range(12)]
    # one span each, ends 1 ms apart: no deadline (end + 1 s) is passed by the watermark
    job.ingest(
        [
            Received(0, i, tid, batch_bytes(tid, "svc", [span(NOW + i * MS - MS, NOW + i * MS)]), ref=i)
            for i, tid in enumerate(traces)
        ],
        NOW + 20 * MS,
    )
    assert job.over_bound() and len(job.assembler) == 12
    out = job.collect(NOW + 100 * MS)  # long before idle_partition_ms
    kept = [avro.decode(avro.KEPT_TRACE, r.value) for r in out.records if r.topic == "traces.kept"]
    assert [k["trace_id"] for k in kept] == traces[:5]
    assert {k["reason"] for k in kept} == {"always_sample;forced=memory_bound"}
    assert job.assembler.buffered_spans == 7 and job.below_resume_mark()
