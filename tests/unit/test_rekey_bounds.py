"""Re-keying is bounded: a request whose per-trace copies would together be far larger than the
request itself is not split (``pipeline.job.rekey.MAX_COPIES_RECORDS``), on either core."""

from __future__ import annotations

import os
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline import metrics
from pipeline.codecs import native
from pipeline.job import Job, Received
from pipeline.job.rekey import max_copies_bytes
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
def test_a_request_whose_copies_would_be_gigabytes_is_buffered_where_it_arrived(core):
    """Before, every copy was built and written: here 400 copies of the 50 KB resource, 20 MB of
    records from one 70 KB request (a 1 MB request of this shape: ~5 GB, an out-of-memory crash
    loop on replay). Now the message is buffered where it arrived, as one with a copy over the
    record limit is, and counted as too large to re-key."""
    job = Job(make_config(job={"core": core}, ingest={"format": "otlp_proto", "rekey": True}), worker_id="w")
    job.input_partitions = 6
    value = one_resource_many_traces(50_000, 400)
    assert len(value) < 80_000 and 400 * 50_000 > max_copies_bytes(job.max_record_bytes)
    too_large = metrics.MESSAGES.labels("too_large_to_rekey")
    before = too_large._value.get()
    job.ingest([Received(0, 0, None, value)], NOW)
    assert too_large._value.get() == before + 1
    assert len(job.assembler) == 400 and job.assembler.buffered_spans == 400
    assert [r for r in job.collect(NOW).records if r.topic == job.input_topic] == []


@pytest.mark.parametrize("core", CORES)
def test_the_same_shape_within_the_bound_is_rekeyed(core):
    """The bound is far above real traffic: 200 one-span traces under a 4 KB resource (~0.8 MB of
    copies from a 40 KB request) are re-keyed, one copy per trace."""
    job = Job(make_config(job={"core": core}, ingest={"format": "otlp_proto", "rekey": True}), worker_id="w")
    job.input_partitions = 6
    job.ingest([Received(0, 0, None, one_resource_many_traces(4_000, 200))], NOW)
    copies = [r for r in job.collect(NOW).records if r.topic == job.input_topic]
    assert len(copies) == 200 and len(job.assembler) == 0
