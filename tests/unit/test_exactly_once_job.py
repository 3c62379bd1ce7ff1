"""exactly_once bookkeeping of the job core (no Kafka): decision-log records, partition
checkpoints (``Outbox.checkpoints``, committed by the data plane as offset metadata), restore, and a
replay after a crash — or a revoke — that emits nothing twice and loses nothing."""

import os

from pipeline import metrics
from pipeline.codecs import avro
from pipeline.job import Job, Received
from tests.spans import span
from tests.support import jobs
from tests.support.jobs import MS, S, records
from tests.support.jobs import received as msg

ZERO = bytes(16)


def make_job(**job) -> Job:
    return jobs.make_job(
        assemble={"root_quiet_gap_ms": 0},
        job={"processing_guarantee": "exactly_once", **job},
        sampling={"policies": [{"name": "errors", "type": "status_code"}]},
    )


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
    assert ZERO not in by_trace  # the checkpoint travels as commit metadata, not as a log record
    assert out.checkpoints == {2: 3}  # every side output of offsets ≤ 3 is in this outbox
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
    return msgs, log, out.checkpoints[2]


def test_replay_after_a_crash_emits_nothing_twice():
    msgs, log, through = crash_after_first_transaction()
    job = make_job()
    assert job.restore(2, log, through) == 2
    job.ingest(msgs, now_ns=10 * S)  # the same offsets again: nothing was committed
    out = job.collect(20 * S)
    assert records(out, "traces.kept") == []  # already in traces.kept
    assert records(out, "sli.windows") == []  # already counted (offsets ≤ checkpoint)
    assert records(out, "spans.deadletter") == []
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [0, 1, 2, 3]  # and the input moves on


def test_late_spans_after_a_restart_follow_the_restored_decision():
    msgs, log, through = crash_after_first_transaction()
    job = make_job()
    job.restore(2, log, through)
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
    assert out.checkpoints == {2: 5}
    # the new spans (offsets 4, 5 > checkpoint 3) are counted into SLIs; the replayed ones are not
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, "sli.windows")) == 2


def test_a_checkpoint_restored_for_one_partition_does_not_skip_another():
    _, log, through = crash_after_first_transaction()
    job = make_job()
    job.restore(2, log, through)
    job.ingest([msg(0, os.urandom(16), "front", [span(1, 1 * MS, parent=None)], partition=1)], now_ns=0)
    out = job.collect(2 * S)
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, "sli.windows")) == 1


def test_at_least_once_writes_decisions_but_no_checkpoint():
    job = make_job(processing_guarantee="at_least_once")
    job.ingest(first_run_messages()[:3], now_ns=0)
    out = job.collect(2 * S)
    assert {d["trace_id"] for _, d in decisions(out)} == {ERR, OK}


def test_a_checkpoint_record_of_the_old_format_in_the_log_is_still_honoured():
    """Decision logs written before checkpoints moved to commit metadata hold checkpoint records
    keyed by the all-zero trace ID; a restore over such a log must not count their spans again."""
    msgs, log, through = crash_after_first_transaction()
    old = dict(log[0], trace_id=ZERO, keep=False, emitted_offsets=[], processed_through=through, reason="checkpoint")
    job = make_job()
    job.restore(2, log + [old])  # no checkpoint from the commit metadata
    job.ingest(msgs, now_ns=10 * S)
    assert records(job.collect(20 * S), "sli.windows") == []


def test_a_revoke_forgets_the_decisions_its_discarded_records_carried():
    """A revoke drops records not yet written; the decisions they carried must go with them.

    Before: ``Job.revoke`` dropped the pending late-span record of a kept trace but kept the offset
    it had added to the decision cache, so when the partition came back (an eager rebalance hands it
    straight back) the replayed late span was skipped as "already emitted" and its offset committed:
    the span was lost (0 kept records after the replay)."""
    msgs, log, through = crash_after_first_transaction()
    job = make_job()
    job.restore(2, log, through)
    late = msg(4, ERR, "cache", [span(3 * MS, 4 * MS)], partition=2)
    job.ingest([late], now_ns=10 * S)  # pending: a late KeptTrace + an updated decision, unwritten
    job.revoke([2])
    job.restore(2, log, through)  # the partition comes back: restored from what the log holds
    job.ingest([late], now_ns=11 * S)
    out = job.collect(20 * S)
    (kept,) = records(out, "traces.kept")
    assert avro.decode(avro.KEPT_TRACE, kept.value)["late"] and kept.holds[0].offset == 4
    job.delivered(out.records)
    assert [h.offset for h in job.ready()] == [4]


def test_reset_forgets_everything_uncommitted():
    """A failed transaction rewinds: buffers, pending records, checkpoints and every remembered
    decision go; the replay then emits what the failed transaction would have."""
    job = make_job()
    msgs = first_run_messages()
    job.ingest(msgs, now_ns=0)
    job.collect(2 * S)  # its transaction fails: nothing of it was written
    job.reset([2])
    assert len(job.assembler) == 0 and len(job.tracker) == 0 and len(job.decisions) == 0
    job.ingest(msgs, now_ns=10 * S)
    out = job.collect(20 * S)
    assert {r.key for r in records(out, "traces.kept")} == {ERR}
    assert len(records(out, "spans.deadletter")) == 1
    assert sum(avro.decode(avro.SLI_WINDOW, r.value)["span_count"] for r in records(out, "sli.windows")) == 3
