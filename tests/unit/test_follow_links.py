"""sampling.follow_links and async boundaries: a trace a kept trace links to is kept too (as
context, adjusted count 0); a queue consumer's span that arrives after the decision follows it."""

import os

from pipeline import metrics
from pipeline.codecs import avro
from pipeline.job import Received
from tests.spans import batch_bytes, span
from tests.support import jobs
from tests.support.jobs import MS, S
from tests.support.jobs import kept_traces as kept


def make_job(follow_links=True):
    return jobs.make_job(
        assemble={"root_quiet_gap_ms": 0},
        sampling={"follow_links": follow_links, "policies": [{"name": "errors", "type": "status_code"}]},
    )


def test_a_trace_linked_from_a_kept_trace_is_kept_with_adjusted_count_zero():
    producer, consumer, unrelated = os.urandom(16), os.urandom(16), os.urandom(16)
    job = make_job()
    # the consumer trace (an ERROR, kept) is first seen earlier, so it is decided first
    job.ingest(
        [
            Received(
                0,
                0,
                consumer,
                batch_bytes(consumer, "worker", [span(1, 5 * MS, "ERROR", parent=None)], links=[producer]),
            )
        ],
        0,
    )
    job.ingest(
        [
            Received(0, 1, producer, batch_bytes(producer, "api", [span(1, 1 * MS, parent=None)])),
            Received(0, 2, unrelated, batch_bytes(unrelated, "api", [span(1, 1 * MS, parent=None)])),
        ],
        500 * MS,
    )
    first = kept(job.collect(1200 * MS))
    assert set(first) == {consumer}
    second = kept(job.collect(1600 * MS))
    assert set(second) == {producer}  # the unrelated OK trace is dropped
    t = second[producer]
    assert t["policy"] == "follow_links" and t["adjusted_count"] == 0.0


def test_off_by_default_and_too_late_when_the_linked_trace_was_dropped():
    producer, consumer = os.urandom(16), os.urandom(16)
    job = make_job(follow_links=False)
    job.ingest(
        [
            Received(
                0, 0, consumer, batch_bytes(consumer, "w", [span(1, 5 * MS, "ERROR", parent=None)], links=[producer])
            ),
            Received(0, 1, producer, batch_bytes(producer, "api", [span(1, 1 * MS, parent=None)])),
        ],
        0,
    )
    assert set(kept(job.collect(2 * S))) == {consumer}

    job = make_job()
    too_late = metrics.FOLLOW_LINKS.labels("too_late")
    before = too_late._value.get()
    job.ingest([Received(0, 0, producer, batch_bytes(producer, "api", [span(1, 1 * MS, parent=None)]))], 0)
    assert kept(job.collect(2 * S)) == {}  # producer dropped before anyone linked to it
    job.ingest(
        [
            Received(
                0, 1, consumer, batch_bytes(consumer, "w", [span(1, 5 * MS, "ERROR", parent=None)], links=[producer])
            )
        ],
        3 * S,
    )
    assert set(kept(job.collect(5 * S))) == {consumer}  # its spans are gone: counted as too_late
    assert too_late._value.get() == before + 1


def test_a_retry_through_a_queue_after_the_decision_follows_it_not_a_new_fragment():
    """A message consumed from a queue and retried after decision_wait: its spans carry messaging
    attributes and arrive late; they join the kept trace as a late KeptTrace (same policy and
    adjusted count), never as a second, separately decided trace."""
    tid = os.urandom(16)
    job = make_job(follow_links=False)
    job.ingest(
        [Received(0, 0, tid, batch_bytes(tid, "api", [span(1, 2 * MS, "ERROR", parent=None, kind="PRODUCER")]))], 0
    )
    (first,) = kept(job.collect(2 * S)).values()
    retry_attrs = {
        "messaging.destination.name": "orders",
        "messaging.operation": "process",
        "messaging.kafka.message.retry_count": 3,
    }
    job.ingest(
        [Received(0, 1, tid, batch_bytes(tid, "worker", [span(1, 9 * MS, kind="CONSUMER")], attributes=retry_attrs))],
        30 * S,
    )
    out = job.collect(31 * S)
    (late,) = kept(out).values()
    assert late["late"] and late["policy"] == first["policy"] == "errors" and late["adjusted_count"] == 1.0
    assert late["batches"][0]["spans"][0]["attributes"]["messaging.destination.name"] == "orders"
    assert not any(
        r.topic == "traces.decisions"
        and avro.decode(avro.TRACE_DECISION, r.value)["trace_id"] == tid
        and avro.decode(avro.TRACE_DECISION, r.value)["emitted_offsets"] != [0, 1]
        for r in out.records
    )
