"""The decision metrics (traces decided, decision points, kept spans) are counted per trace but
added to Prometheus once per ``decide_due``; the totals must stay exact — also for a trace sealed
during ingest (span limit), which is added by the ``decide_due`` that hands its records over."""

from prometheus_client import REGISTRY

from pipeline.job import Received
from tests.spans import batch_bytes, span
from tests.support import jobs
from tests.support.jobs import MS, S


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts() -> dict[str, float]:
    return {
        "keep_errors": sample("tailsift_traces_decided_total", decision="keep", policy="errors", forced="-"),
        "keep_errors_forced": sample(
            "tailsift_traces_decided_total", decision="keep", policy="errors", forced="span_limit"
        ),
        "drop": sample("tailsift_traces_decided_total", decision="drop", policy="-", forced="-"),
        "timer": sample("tailsift_decision_points_total", trigger="decision_wait")
        + sample("tailsift_decision_points_total", trigger="root_quiet"),
        "span_limit": sample("tailsift_decision_points_total", trigger="span_limit"),
        "kept_spans": sample("tailsift_kept_spans_total"),
    }


def test_counts_are_exact_per_decide_due_including_traces_sealed_at_ingest():
    job = jobs.make_job(
        sampling={"policies": [{"name": "errors", "type": "status_code"}]},
        assemble={"max_spans_per_trace": 3},
    )
    before = counts()
    msgs = []
    for i in range(5):  # 2 kept (ERROR), 3 dropped; two spans each
        tid = bytes([i + 1]) * 16
        status = "ERROR" if i < 2 else "UNSET"
        msgs.append(Received(0, i, tid, batch_bytes(tid, "svc", [span(1, MS, status, parent=None), span(2, MS)])))
    big = bytes([9]) * 16  # four spans: over the span limit, sealed while ingesting
    big_spans = [span(1, MS, "ERROR", parent=None)] + [span(2, MS) for _ in range(3)]
    msgs.append(Received(0, 5, big, batch_bytes(big, "svc", big_spans)))
    job.ingest(msgs, now_ns=0)
    out = job.decide_due(10 * S)
    delta = {k: v - before[k] for k, v in counts().items()}
    assert out.kept_traces == 3 and out.dropped_traces == 5 - 2
    assert delta == {
        "keep_errors": 2,
        "keep_errors_forced": 1,
        "drop": 3,
        "timer": 5,
        "span_limit": 1,
        "kept_spans": 2 * 2 + 4,
    }
    # nothing left over to be counted twice
    job.decide_due(20 * S)
    assert {k: v - before[k] for k, v in counts().items()} == delta
