"""Re-keying is bounded: a request whose copies would together be far larger than the request
itself is not split (``pipeline.job.rekey.MAX_COPIES_RECORDS``), on either core."""

from __future__ import annotations

import os
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline import metrics
from pipeline.codecs import native
from pipeline.job import Job, Received
from pipeline.job.rekey import max_copies_bytes
from pipeline.kafka.partitioner import TAILSIFT
from tests.support.jobs import make_config

NOW = time.time_ns()


def one_resource_many_traces(resource_bytes: int, traces: int) -> bytes:
    """One resource of ``resource_bytes`` over ``traces`` one-span traces: every copy repeats it."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "cart"
    rs.resource.attributes.add(key="k8s.blob").value.string_value = "x" * resource_bytes
    ss = rs.scope_spans.add()
    for _ in range(traces):
        sp = ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="op")
        sp.start_time_unix_nano, sp.end_time_unix_nano = NOW - 9_000_000, NOW - 1_000_000
    return req.SerializeToString()


CORES = ["python", pytest.param("native", marks=pytest.mark.skipif(not native.AVAILABLE, reason="not built"))]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("partitions,resource_bytes", [(0, 50_000), (2_000, 100_000)])
def test_a_request_whose_copies_would_be_gigabytes_is_buffered_where_it_arrived(core, partitions, resource_bytes):
    """Before, every copy was built and written: here 400 copies of the 50 KB resource, 20 MB of
    records from one 70 KB request (a 1 MB request of this shape: ~5 GB, an out-of-memory crash
    loop on replay). Now the message is buffered where it arrived, as one with a copy over the
    record limit is, and counted as too large to re-key. One copy per trace while the partition
    count is unknown (0); one per destination partition on a topic of 2,000 (~360 of them here,
    of a 100 KB resource: 36 MB)."""
    job = Job(make_config(job={"core": core}, ingest={"format": "otlp_proto", "rekey": True}), worker_id="w")
    job.input_partitions = partitions
    value = one_resource_many_traces(resource_bytes, 400)
    fewest_copies = 400 if partitions == 0 else 300
    assert len(value) < resource_bytes + 30_000
    assert fewest_copies * resource_bytes > max_copies_bytes(job.max_record_bytes)
    too_large = metrics.MESSAGES.labels("too_large_to_rekey")
    before = too_large._value.get()
    job.ingest([Received(0, 0, None, value)], NOW)
    assert too_large._value.get() == before + 1
    assert len(job.assembler) == 400 and job.assembler.buffered_spans == 400
    assert [r for r in job.collect(NOW).records if r.topic == job.input_topic] == []


@pytest.mark.parametrize("core", CORES)
def test_the_same_shape_within_the_bound_is_rekeyed(core):
    """The bound is far above real traffic: 200 one-span traces under a 4 KB resource (~0.8 MB of
    copies from a 40 KB request) are re-keyed, one copy per trace, while the partition count is
    unknown."""
    job = Job(make_config(job={"core": core}, ingest={"format": "otlp_proto", "rekey": True}), worker_id="w")
    job.input_partitions = 0
    job.ingest([Received(0, 0, None, one_resource_many_traces(4_000, 200))], NOW)
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert len(copies) == 200 and len(job.assembler) == 0


@pytest.mark.parametrize("core", CORES)
def test_one_copy_per_partition_repeats_the_resource_once_per_partition(core):
    """The hostile shape on a 6-partition topic: one copy per destination partition, so the 50 KB
    resource is repeated 6 times (~0.4 MB of copies), not 400 (20 MB, refused) — the message is
    re-keyed, every span in exactly one copy on its trace's partition."""
    job = Job(make_config(job={"core": core}, ingest={"format": "otlp_proto", "rekey": True}), worker_id="w")
    job.input_partitions = 6
    value = one_resource_many_traces(50_000, 400)
    job.ingest([Received(0, 0, None, value)], NOW)
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert sorted(r.partition for r in copies) == list(range(6)) and len(job.assembler) == 0
    assert all(r.key is None for r in copies) and sum(len(r.value) for r in copies) < 7 * 52_000
    seen = []
    for r in copies:
        req = ExportTraceServiceRequest.FromString(r.value)
        tids = [sp.trace_id for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
        assert {TAILSIFT.partition(t, 6) for t in tids} == {r.partition}
        seen += tids
    assert len(seen) == len(set(seen)) == 400
