"""make bench-peer's input and its bounded waits (no Kafka): the traffic is what the Collector's kafka
exporter would send, in both shapes, and a system that never drains is reported, not waited on."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from pipeline.codecs import otlp
from pipeline.peerbench import run, threads
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


def test_cpu_by_thread_sums_librdkafka_threads_and_counts_threads_that_ended():
    """The split the bench prints per thread: librdkafka's numbered broker threads are one line,
    a thread gone before the end counts with its last reading, one started after the start counts
    whole, and what no reading saw is left over as not attributed."""
    before = {(1, "python"): 10.0, (2, "rdk:broker1"): 1.0, (3, "rdk:broker-1"): 0.5, (4, "rdk:main"): 0.2}
    seen = {
        (1, "python"): 14.0,
        (2, "rdk:broker1"): 1.5,
        (3, "rdk:broker-1"): 0.75,  # ended before the last sample: its last reading
        (4, "rdk:main"): 0.3,
        (9, "python"): 0.5,  # a helper thread started during the drain
    }
    spent = threads.split(before, seen)
    assert spent == {"python": 4.5, "rdk:broker": 0.75, "rdk:main": pytest.approx(0.1)}
    lines = threads.render(spent, total_s=6.0, spans=1_000_000)
    assert lines[0].split()[:2] == ["python", "4.50"] and "4.5 µs/span" in lines[0]
    assert lines[-1].split()[:3] == ["(not", "attributed)", "0.65"]


def test_cpu_by_thread_reads_this_process():
    readings = threads.thread_cpu(os.getpid())
    assert any(tid == os.getpid() for tid, _name in readings)  # the main thread's id is the pid
    assert all(cpu >= 0 for cpu in readings.values())


def test_rounds_alternate_the_systems_in_mirrored_order():
    """Every system drains once per round; the order is mirrored round by round, so no system is
    always the first (or the last) to run while the machine's load drifts."""
    assert run.schedule(["c", "t", "n"], 3) == [
        (0, "c"), (0, "t"), (0, "n"),
        (1, "n"), (1, "t"), (1, "c"),
        (2, "c"), (2, "t"), (2, "n"),
    ]  # fmt: skip
    assert run.schedule(["c"], 2) == [(0, "c"), (1, "c")]


def _drain(system: str, variant: str, rnd: int, per_cpu: float, error: str = "") -> run.Result:
    """A drain of ``per_cpu`` spans per CPU-second (1,000 spans)."""
    return run.Result(system, variant, round=rnd, spans=1_000, cpu_s=1_000 / per_cpu, wall_s=1.0, error=error)


def test_summary_is_the_median_drain_with_its_spread_and_the_ratio_of_medians():
    """The figure of a system is the median of its drains (one disturbed drain does not move it),
    with their min and max; the ratio is median against the Collector's median, and the per-round
    ratios pair each drain with the Collector's drain of the same round."""
    results = [
        _drain("Collector", "unkeyed", 0, 80_000),
        _drain("tailsift", "unkeyed", 0, 90_000),
        _drain("tailsift", "unkeyed", 1, 60_000),  # a drain disturbed by other work
        _drain("Collector", "unkeyed", 1, 100_000),
        _drain("Collector", "unkeyed", 2, 75_000),
        _drain("tailsift", "unkeyed", 2, 84_000),
    ]
    collector, tailsift = run.summarize(results)
    assert (collector.system, tailsift.system) == ("Collector", "tailsift")
    assert [r.round for r in tailsift.runs] == [0, 1, 2]
    assert collector.per_cpu == pytest.approx(80_000) and tailsift.per_cpu == pytest.approx(84_000)
    assert tailsift.spread == (pytest.approx(60_000), pytest.approx(90_000))
    assert tailsift.ratio(collector) == pytest.approx(84_000 / 80_000)
    assert tailsift.round_ratios(collector) == [
        pytest.approx(90 / 80),
        pytest.approx(60 / 100),
        pytest.approx(84 / 75),
    ]
    assert tailsift.median_run is tailsift.runs[2]


def test_failed_drains_are_left_out_of_the_median_and_counted():
    """A drain that crashed or stalled has no figure: the median is over the others, the failure
    stays visible; with every drain failed there is no figure and no ratio."""
    results = [
        _drain("Collector", "keyed", 0, 50_000),
        _drain("tailsift", "keyed", 0, 0.001, error="stalled"),
        _drain("Collector", "keyed", 1, 52_000),
        _drain("tailsift", "keyed", 1, 80_000),
        _drain("tailsift", "keyed", 2, 70_000),
        _drain("Collector", "keyed", 2, 54_000),
    ]
    collector, tailsift = run.summarize(results)
    assert len(tailsift.ok) == 2 and len(tailsift.failed) == 1
    assert tailsift.per_cpu == pytest.approx(75_000)  # the median of the two that drained
    assert tailsift.median_run is tailsift.runs[2]  # the lower of the middle two
    assert tailsift.round_ratios(collector) == [pytest.approx(80 / 52), pytest.approx(70 / 54)]
    none = run.summarize([_drain("tailsift", "keyed", 0, 1.0, error="crashed")])[0]
    assert none.per_cpu == 0.0 and none.median_run is None and none.ratio(collector) == 0.0


def test_tailsift_is_measured_from_its_first_message_taken_not_its_first_span_ingested():
    """An unkeyed message is re-keyed, its spans ingested only once its copies come back after the
    first commit. The bench waited for ``tailsift_spans_ingested_total`` > 0 and so began to measure
    after the re-keying of everything consumed until then (an unkeyed drain measured from 60K of
    its 180K spans on): it begins at the first message taken, whatever its outcome."""
    rekeyed_only = {'tailsift_messages_total{outcome="rekeyed"}': 12.0, "tailsift_spans_ingested_total": 0.0}
    assert run.tailsift_began(0, rekeyed_only)
    assert not run.tailsift_began(0, {'tailsift_messages_total{outcome="rekeyed"}': 0.0})
    assert not run.tailsift_began(0, None)
    assert run.tailsift_began(5, {})
    samples = iter([(0, {}), (0, rekeyed_only), (0, rekeyed_only), (900, {"done": 1})])
    sampler = run._Sampler(os.getpid(), timeout=30)
    first, _last, _rss, state = sampler.run(lambda: next(samples), lambda m: "done" in m, run.tailsift_began)
    assert first[2] == 0 and state == {"done": 1}  # measured from the second sample: 0 spans in
    assert sampler.first is first
