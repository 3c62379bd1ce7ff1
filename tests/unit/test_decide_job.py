"""The engine inside the job core: annotations, tracestate th, dry-run, attribute policies."""

import pytest

from operators import randomness
from operators.tracestate import ot_fields
from pipeline.job import Received
from tests.spans import batch_bytes, span
from tests.support import jobs
from tests.support.jobs import MS, kept_traces


def make_job(sampling):
    return jobs.make_job(sampling=sampling)


def tid_with_randomness(r: int) -> bytes:
    return b"\x01" * 9 + r.to_bytes(7, "big")


HIGH = tid_with_randomness((1 << 56) - 1)  # kept by every probabilistic rule
LOW = tid_with_randomness(1)  # kept by none


def kept(job, now=1000 * MS):
    return kept_traces(job.collect(now))


def spans_of(trace):
    return [s for b in trace["batches"] for s in b["spans"]]


def test_probabilistic_keep_writes_th_into_tracestate_and_adjusted_count():
    job = make_job(
        {
            "policies": [
                {"name": "errors", "type": "status_code"},
                {"name": "base", "type": "probabilistic", "sampling_percentage": 25},
            ]
        }
    )
    s = span(1, MS, parent=None)
    s["trace_state"] = "vendor=x"
    err = tid_with_randomness(5)
    job.ingest(
        [
            Received(0, 0, HIGH, batch_bytes(HIGH, "svc", [s])),
            Received(0, 1, LOW, batch_bytes(LOW, "svc", [span(1, MS, parent=None)])),
            Received(0, 2, err, batch_bytes(err, "svc", [span(1, MS, "ERROR", parent=None)])),
        ],
        now_ns=0,
    )
    out = kept(job)
    assert set(out) == {HIGH, err}
    (sp,) = spans_of(out[HIGH])
    assert sp["attributes"]["sampling.policy"] == "base" and sp["attributes"][
        "sampling.adjusted_count"
    ] == pytest.approx(4.0)
    assert ot_fields(sp["trace_state"])["th"] == randomness.threshold_hex(randomness.threshold(0.25)) == "c"
    assert sp["trace_state"].endswith("vendor=x")
    (e,) = spans_of(out[err])
    assert e["attributes"]["sampling.adjusted_count"] == 1.0 and "th:" not in e["trace_state"]  # p = 1: untouched


def test_dry_run_keeps_everything_and_says_what_would_have_happened():
    job = make_job(
        {"dry_run": True, "policies": [{"name": "base", "type": "probabilistic", "sampling_percentage": 10}]}
    )
    job.ingest(
        [
            Received(0, 0, HIGH, batch_bytes(HIGH, "svc", [span(1, MS, parent=None)])),
            Received(0, 1, LOW, batch_bytes(LOW, "svc", [span(1, MS, parent=None)])),
        ],
        now_ns=0,
    )
    out = kept(job)
    assert set(out) == {HIGH, LOW}
    (hi,), (lo,) = spans_of(out[HIGH]), spans_of(out[LOW])
    assert hi["attributes"]["sampling.dry_run_kept"] is True and hi["attributes"][
        "sampling.adjusted_count"
    ] == pytest.approx(10)
    assert lo["attributes"]["sampling.dry_run_kept"] is False and lo["attributes"]["sampling.adjusted_count"] == 0.0
    assert lo["attributes"]["sampling.reason"] == "not_sampled"
    assert "th:" not in hi["trace_state"]  # nothing was really sampled
    # late spans of a dry-run trace follow it out, annotated the same way
    job.ingest([Received(0, 2, LOW, batch_bytes(LOW, "db", [span(1, MS)]))], now_ns=2000 * MS)
    late = kept(job, 2000 * MS)[LOW]
    assert late["late"] and spans_of(late)[0]["attributes"]["sampling.dry_run_kept"] is False


def test_attribute_policy_in_the_job_decodes_lazily_and_keeps_by_attribute():
    job = make_job({"policies": [{"name": "vip", "type": "string_attribute", "key": "user.tier", "values": ["gold"]}]})
    a, b = tid_with_randomness(10), tid_with_randomness(11)
    job.ingest(
        [
            Received(0, 0, a, batch_bytes(a, "svc", [span(1, MS, parent=None)], {"user.tier": "gold"})),
            Received(0, 1, b, batch_bytes(b, "svc", [span(1, MS, parent=None)], {"user.tier": "free"})),
        ],
        now_ns=0,
    )
    out = kept(job)
    assert set(out) == {a} and out[a]["policy"] == "vip"


def test_first_match_mode_and_drop_rules_through_the_job():
    job = make_job(
        {
            "mode": "first_match",
            "policies": [
                {
                    "name": "no-health",
                    "type": "drop",
                    "policies": [{"name": "h", "type": "string_attribute", "key": "http.route", "values": ["/health"]}],
                },
                {"name": "errors", "type": "status_code"},
                {"name": "all", "type": "always_sample"},
            ],
        }
    )
    a, b = tid_with_randomness(10), tid_with_randomness(11)
    job.ingest(
        [
            Received(0, 0, a, batch_bytes(a, "svc", [span(1, MS, "ERROR", parent=None)], {"http.route": "/health"})),
            Received(0, 1, b, batch_bytes(b, "svc", [span(1, MS, parent=None)], {"http.route": "/cart"})),
        ],
        now_ns=0,
    )
    out = kept(job)
    assert set(out) == {b} and out[b]["policy"] == "all"
