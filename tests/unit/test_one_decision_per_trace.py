"""A trace has one decision: fragments after a forced decision follow it, and `follow_links` never
brings back a trace a drop policy dropped."""

from __future__ import annotations

import os

from pipeline import config, metrics
from pipeline.codecs import avro
from pipeline.job import Job, Received
from tests.spans import batch_bytes, span

MS = 1_000_000
S = 1_000 * MS
NOW = 1_700_000_000 * S


def make_job(policies, **sampling):
    cfg = config.parse(
        {
            "job": {"processing_guarantee": "at_least_once"},
            "privacy": {"enabled": False},
            "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0, "max_spans_per_trace": 3},
            "sampling": {"policies": policies, **sampling},
        }
    )
    return Job(cfg, worker_id="test")


def msg(offset, trace_id, spans, attributes=None, links=None):
    return Received(0, offset, trace_id, batch_bytes(trace_id, "svc", spans, attributes, links), ref=offset)


def kept_traces(out):
    return [avro.decode(avro.KEPT_TRACE, r.value) for r in out.records if r.topic == "traces.kept"]


def decisions(out):
    return [avro.decode(avro.TRACE_DECISION, r.value) for r in out.records if r.topic == "traces.decisions"]


def test_the_rest_of_a_trace_forced_by_its_span_limit_follows_the_one_kept_decision():
    """Old code (processing time): the trace forced at 3 spans was decided only at the next
    collect; its next 2 spans, arriving before that, opened a second buffer with a decision of its
    own (observed: two kept records, neither late, two kept decisions — Σ adjusted count 2 for one
    trace). Now: one decision; the 2 spans are written as late spans of it."""
    job = make_job([{"name": "all", "type": "always_sample"}])
    tid = os.urandom(16)
    job.ingest([msg(0, tid, [span(NOW - 3 * MS, NOW - MS, parent=None), span(NOW - 2 * MS, NOW - MS)])], NOW)
    job.ingest([msg(1, tid, [span(NOW - 2 * MS, NOW - MS)])], NOW + 1 * MS)  # the third span: forced here
    job.ingest([msg(2, tid, [span(NOW - 2 * MS, NOW), span(NOW - MS, NOW)])], NOW + 2 * MS)
    out = job.collect(NOW + 2 * S)
    kept = kept_traces(out)
    assert [(k["span_count"], k["late"], k["reason"]) for k in kept] == [
        (3, False, "always_sample;forced=span_limit"),
        (2, True, "always_sample"),
    ]
    assert sum(k["adjusted_count"] for k in kept if not k["late"]) == 1.0
    # the decision record, then the same decision again with the late offsets added
    assert [(d["keep"], d["emitted_offsets"]) for d in decisions(out)] == [(True, [0, 1]), (True, [0, 1, 2])]


def test_an_error_after_a_forced_drop_follows_the_drop_instead_of_keeping_a_tail():
    """Old code: the head forced by the span limit (no error) was dropped at the next collect,
    and the tail with the error, arriving before it, became a second buffer that was kept on its
    own (observed: a kept record of 1 span — a dropped head with a kept tail). Now the tail
    follows the trace's one decision: nothing is kept."""
    job = make_job([{"name": "errors", "type": "status_code"}])
    tid = os.urandom(16)
    job.ingest([msg(0, tid, [span(NOW - 3 * MS, NOW - MS, parent=None), span(NOW - 2 * MS, NOW - MS)])], NOW)
    job.ingest([msg(1, tid, [span(NOW - 2 * MS, NOW - MS)])], NOW + 1 * MS)
    job.ingest([msg(2, tid, [span(NOW - 2 * MS, NOW, "ERROR")])], NOW + 2 * MS)
    out = job.collect(NOW + 2 * S, flush_all_windows=True)
    assert kept_traces(out) == []
    assert [(d["keep"], d["reason"]) for d in decisions(out)] == [(False, "not_sampled")]
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [0, 1, 2]


def test_follow_links_does_not_keep_a_trace_a_drop_policy_dropped():
    """Old code: a health-check trace dropped by an explicit `drop` policy was kept (policy
    follow_links) because a kept error trace linked to it (observed: 2 kept records). Drop wins:
    only the error trace is kept, and the outcome is counted as dropped_by_policy."""
    policies = [
        {
            "name": "no-health",
            "type": "drop",
            "policies": [{"name": "health", "type": "string_attribute", "key": "http.route", "values": ["/health"]}],
        },
        {"name": "errors", "type": "status_code"},
    ]
    job = make_job(policies, follow_links=True)
    error, health = os.urandom(16), os.urandom(16)
    before = metrics.FOLLOW_LINKS.labels("dropped_by_policy")._value.get()
    job.ingest([msg(0, error, [span(NOW - MS, NOW, "ERROR", parent=None)], links=[health])], NOW)
    job.ingest([msg(1, health, [span(NOW - MS, NOW, parent=None)], attributes={"http.route": "/health"})], NOW + MS)
    out = job.collect(NOW + 2 * S)
    assert [k["trace_id"] for k in kept_traces(out)] == [error]
    by_trace = {d["trace_id"]: (d["keep"], d["policy"]) for d in decisions(out)}
    assert by_trace == {error: (True, "errors"), health: (False, "no-health")}
    assert metrics.FOLLOW_LINKS.labels("dropped_by_policy")._value.get() == before + 1
