"""make bench-peer's input and its bounded waits (no Kafka): the traffic is what the Collector's kafka
exporter would send, in both shapes, and a system that never drains is reported, not waited on."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from pipeline.codecs import otlp
from pipeline.peerbench import run
from pipeline.peerbench.traffic import KEYED_CHUNK, UNKEYED_BATCH, generate


@pytest.fixture(scope="module")
def traffic():
    return generate(300, seed=3, start_ns=1_700_000_000_000_000_000, big_traces=2, big_trace_spans=1_200)


def _spans(messages) -> tuple[Counter, dict, int]:
    """Spans per trace, error/duration per trace, and the largest number of traces in one message."""
    per_trace: Counter = Counter()
    info: dict = {}
    most = 0
    for _, value in messages:
        traces = otlp.decode_traces(value)
        most = max(most, len(traces))
        for tid, t in traces.items():
            per_trace[tid] += len(t.spans)
            starts = [s["start_time_unix_nano"] for s in t.spans]
            ends = [s["end_time_unix_nano"] for s in t.spans]
            err = any(s["status_code"] == "ERROR" for s in t.spans)
            e0, s0, d0 = info.get(tid, (False, min(starts), max(ends)))
            info[tid] = (e0 or err, min(s0, *starts), max(d0, *ends))
    return per_trace, info, most


def test_keyed_is_one_trace_per_message_keyed_by_its_hex_id(traffic):
    keyed, _ = traffic
    for key, value in keyed.messages:
        (tid,) = otlp.decode_traces(value)
        assert key == tid.hex().encode()
    per_trace, info, _ = _spans(keyed.messages)
    assert per_trace == Counter(keyed.spans_per_trace) and sum(per_trace.values()) == keyed.spans
    assert keyed.traces == 302 and sorted(per_trace.values())[-2:] == [1_200, 1_200]
    assert all(7 <= n <= 10 for n in sorted(per_trace.values())[:-2])
    # a big trace is split (an SDK exports <= 512 spans per batch; 1 MB broker default)
    assert max(len(otlp.decode_traces(v)[bytes.fromhex(k.decode())].spans) for k, v in keyed.messages) == KEYED_CHUNK
    assert {t for t, (err, _, _) in info.items() if err} == keyed.error_traces
    assert {t for t, (_, s, e) in info.items() if e - s >= 500_000_000} == keyed.slow_traces
    assert keyed.error_traces and keyed.slow_traces


def test_unkeyed_is_the_same_spans_in_multi_trace_batches(traffic):
    keyed, unkeyed = traffic
    assert all(k is None for k, _ in unkeyed.messages)
    per_trace, _, most = _spans(unkeyed.messages)
    assert per_trace == Counter(keyed.spans_per_trace)
    assert most > 10  # whole export batches: many traces per message
    sizes = [sum(len(t.spans) for t in otlp.decode_traces(v).values()) for _, v in unkeyed.messages]
    assert set(sizes[:-1]) == {UNKEYED_BATCH} and 0 < sizes[-1] <= UNKEYED_BATCH


def test_a_system_that_never_drains_is_reported_as_stalled():
    sampler = run._Sampler(os.getpid(), timeout=0.6)
    with pytest.raises(run.RunFailed, match="stalled"):
        sampler.run(lambda: (10, None), lambda _state: False)
