"""exactly_once bookkeeping of the job core (no Kafka): decision-log records, partition
checkpoints, restore, and a replay after a crash that emits nothing twice and loses nothing."""

import os

from pipeline import config, metrics
from pipeline.codecs import avro
from pipeline.job import Job, Received
from tests.spans import batch_bytes, span

S = 1_000_000_000
MS = 1_000_000
ZERO = bytes(16)


def make_job(**job):
    cfg = config.parse(
        {
            "privacy": {"enabled": False},
            "assemble": {"decision_wait_ms": 1000, "root_quiet_gap_ms": 0},
            "sli": {"window_seconds": 10, "grace_seconds": 0},
            "job": {"processing_guarantee": "exactly_once", **job},
            "sampling": {"policies": [{"name": "errors", "type": "status_code"}]},
        }
    )
    return Job(cfg, worker_id="test")


def msg(offset, trace_id, service, spans, partition=0, key=None):
    return Received(
        partition, offset, trace_id if key is None else key, batch_bytes(trace_id, service, spans), ref=offset
    )


def records(outbox, topic):
    return [r for r in outbox.records if r.topic == topic]


def decisions(outbox):
    return [(r.partition, avro.decode(avro.TRACE_DECISION, r.value)) for r in records(outbox, "traces.decisions")]


ERR, OK = os.urandom(16), os.urandom(16)


def first_run_messages():
    return [
        msg(0, ERR, "front", [span(1, 10 * MS, parent=None)], partition=2),
        msg(1, OK, "front", [span(1, 10 * MS, parent=None)], partition=2),
        msg(2, ERR, "db", [span(1 * MS, 2 * MS, "ERROR")], partition=2),
        Received(2, 3, b"k", b"\xff garbage", ref=3),  # malformed → dead letter
    ]


def test_decisions_and_a_checkpoint_go_to_the_input_partition():
    job = make_job()
    msgs = first_run_messages()
    job.ingest(msgs, now_ns=0)
    out = job.collect(2 * S)
    got = decisions(out)
    assert all(p == 2 for p, _ in got)
    by_trace = {d["trace_id"]: d for _, d in got}
    assert by_trace[ERR]["keep"] and by_trace[ERR]["emitted_offsets"] == [0, 2] and by_trace[ERR]["policy"] == "errors"
    assert not by_trace[OK]["keep"] and by_trace[OK]["emitted_offsets"] == []
    assert by_trace[ZERO]["processed_through"] == 3  # every side output of offsets ≤ 3 is in this outbox
    # every open SLI window leaves with the transaction (partials), so the checkpoint is true
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, "sli.windows")) == 3
    assert len(records(out, "spans.deadletter")) == 1
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [0, 1, 2, 3]


def crash_after_first_transaction():
    """Run 1 writes its transaction, then dies before committing its input offsets."""
    job = make_job()
    msgs = first_run_messages()
    job.ingest(msgs, now_ns=0)
    out = job.collect(2 * S)
    log = [d for _, d in decisions(out)]
    return msgs, log


def test_replay_after_a_crash_emits_nothing_twice():
    msgs, log = crash_after_first_transaction()
    job = make_job()
    assert job.restore(2, log) == 2
    job.ingest(msgs, now_ns=10 * S)  # the same offsets again: nothing was committed
    out = job.collect(20 * S)
    assert records(out, "traces.kept") == []  # already in traces.kept
    assert records(out, "sli.windows") == []  # already counted (offsets ≤ checkpoint)
    assert records(out, "spans.deadletter") == []
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [0, 1, 2, 3]  # and the input moves on


def test_late_spans_after_a_restart_follow_the_restored_decision():
    msgs, log = crash_after_first_transaction()
    job = make_job()
    job.restore(2, log)
    before = {o: metrics.LATE_SPANS.labels(o)._value.get() for o in ("kept", "dropped", "replayed")}
    job.ingest(
        msgs
        + [
            msg(4, ERR, "cache", [span(3 * MS, 4 * MS)], partition=2),  # late span of the kept trace
            msg(5, OK, "cache", [span(3 * MS, 4 * MS)], partition=2),  # late span of the dropped trace
        ],
        now_ns=10 * S,
    )
    out = job.collect(20 * S)
    (late,) = records(out, "traces.kept")
    trace = avro.decode(avro.KEPT_TRACE, late.value)
    assert late.key == ERR and trace["late"] and trace["span_count"] == 1 and trace["policy"] == "errors"
    # replayed: offsets 0 and 2 (kept trace, already emitted); 1 (dropped trace) counts as dropped
    assert {o: metrics.LATE_SPANS.labels(o)._value.get() - v for o, v in before.items()} == {
        "kept": 1,
        "dropped": 2,
        "replayed": 2,
    }
    upd = {d["trace_id"]: d for _, d in decisions(out)}
    assert upd[ERR]["emitted_offsets"] == [0, 2, 4]  # so a second replay skips offset 4 too
    assert upd[ZERO]["processed_through"] == 5
    # the new spans (offsets 4, 5 > checkpoint 3) are counted into SLIs; the replayed ones are not
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, "sli.windows")) == 2


def test_a_checkpoint_restored_for_one_partition_does_not_skip_another():
    _, log = crash_after_first_transaction()
    job = make_job()
    job.restore(2, log)
    job.ingest([msg(0, os.urandom(16), "front", [span(1, 1 * MS, parent=None)], partition=1)], now_ns=0)
    out = job.collect(2 * S)
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, "sli.windows")) == 1


def test_at_least_once_writes_decisions_but_no_checkpoint():
    job = make_job(processing_guarantee="at_least_once")
    job.ingest(first_run_messages()[:3], now_ns=0)
    out = job.collect(2 * S)
    assert {d["trace_id"] for _, d in decisions(out)} == {ERR, OK}
