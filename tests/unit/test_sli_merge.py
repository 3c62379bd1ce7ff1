"""Partials merge to exact totals: the same traffic over 1 partition / 1 worker and over 4
partitions / 2 workers (with windows emitted at different moments) gives the same windows."""

from __future__ import annotations

import argparse

import pytest

from operators.sli import SliWindows, window_record
from operators.sli_merge import merge_records, roll_up
from pipeline import sli_reader
from pipeline.codecs import avro
from tests.unit.test_sli_accuracy import MS, S, exact_quantile, generated_messages, ground_truth

WINDOW = 2 * S


def emit(windows: SliWindows, worker: str, now_ns: int, flush_all: bool = False) -> list[dict]:
    # through the wire format, as a downstream consumer sees them
    return [
        avro.decode(avro.SLI_WINDOW, avro.encode(avro.SLI_WINDOW, window_record(w, worker, now_ns)))
        for w in windows.due(now_ns, flush_all)
    ]


def run_one_worker(messages) -> list[dict]:
    w = SliWindows(WINDOW, grace_ns=0)
    for _, service, spans in messages:
        w.add(0, service, spans)
    return emit(w, "solo", 0, flush_all=True)


def run_two_workers_four_partitions(messages) -> list[dict]:
    a, b = SliWindows(WINDOW, grace_ns=0), SliWindows(WINDOW, grace_ns=S)
    owner = {0: a, 1: a, 2: b, 3: b}
    records = []
    for i, (trace_id, service, spans) in enumerate(messages):
        partition = trace_id[-1] % 4
        owner[partition].add(partition, service, spans)
        if i % 997 == 0:  # emit closed windows as the job's tick would; later spans make stragglers
            now = spans[-1]["end_time_unix_nano"]
            records += emit(a, "A", now) + emit(b, "B", now)
    return records + emit(a, "A", 0, True) + emit(b, "B", 0, True)


@pytest.fixture(scope="module")
def messages():
    # spans of one trace arrive in several messages and end out of order: plenty of stragglers
    return generated_messages(1_200, seed=33)


def test_four_partitions_two_workers_merge_to_the_same_totals_as_one(messages):
    one = merge_records(run_one_worker(messages))
    split_records = run_two_workers_four_partitions(messages)
    split = merge_records(split_records)
    assert len(split_records) > len(one)  # really partials
    assert any(m.partials > 1 and len(m.workers) == 2 for m in split.values())
    assert set(one) == set(split)
    for key, m in one.items():
        s = split[key]
        assert (s.span_count, s.error_count, s.root_count) == (m.span_count, m.error_count, m.root_count)
        assert (s.min_ms, s.max_ms) == (m.min_ms, m.max_ms) and s.sum_ms == pytest.approx(m.sum_ms)
        for q in (0.5, 0.9, 0.95, 0.99):
            assert s.quantile(q) == m.quantile(q)  # same bins: merged sketches are identical


def test_merged_totals_equal_ground_truth_and_roll_up_per_service(messages):
    merged = merge_records(run_two_workers_four_partitions(messages))
    truth = ground_truth(messages, WINDOW)
    for (start, service, op, kind, status), t in truth.items():
        m = merged[(service, op, kind, status, start, start + WINDOW)]
        assert (m.span_count, m.error_count) == (t["n"], t["errors"])
        lat = sorted(t["lat"])
        for q in (0.5, 0.99):
            assert m.quantile(q) == pytest.approx(exact_quantile(lat, q), rel=0.01)
    per_service = roll_up(merged, lambda k: k[:1])
    for (service,), m in per_service.items():
        lat = sorted(x for (_, s, *_), t in truth.items() if s == service for x in t["lat"])
        assert m.span_count == len(lat)
        assert m.quantile(0.95) == pytest.approx(exact_quantile(lat, 0.95), rel=0.01)


def test_reader_rows_and_json_shape(messages, capsys, monkeypatch):
    merged = merge_records(run_one_worker(messages[:300]))
    monkeypatch.setattr(sli_reader, "read_windows", lambda config, timeout: merged)
    args = argparse.Namespace(by="service", per_window=False, service=None, json=True, timeout=1.0)
    assert sli_reader.main(None, args) == 0
    import json

    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sum(x["spans"] for x in lines) == sum(m.span_count for m in merged.values())
    assert {"service", "spans", "errors", "error_ratio", "p50_ms", "p99_ms", "max_ms"} <= set(lines[0])
    args = argparse.Namespace(by="full", per_window=True, service="frontend", json=False, timeout=1.0)
    assert sli_reader.main(None, args) == 0
    assert "frontend" in capsys.readouterr().out


def test_bench_sli_reports_cost_per_span():
    lines = []
    figures = sli_reader.bench_sli(traces=40, rounds=1, out=lines.append)
    assert figures["spans"] > 100 and figures["add_us_per_span"] > 0 and figures["windows"] > 0
    assert "µs per span" in lines[0]


def test_the_job_exposes_sli_span_counters_per_service_kind_status():
    import os

    from prometheus_client import REGISTRY

    from pipeline.job import Received
    from tests.spans import batch_bytes, span
    from tests.support.jobs import make_job

    job = make_job()

    def value(status):
        return (
            REGISTRY.get_sample_value(
                "tailsift_sli_spans_total", {"service": "m-svc", "span_kind": "SERVER", "status": status}
            )
            or 0.0
        )

    before = value("ERROR"), value("UNSET")
    tid = os.urandom(16)
    job.ingest(
        [
            Received(
                0, 0, tid, batch_bytes(tid, "m-svc", [span(1, MS + 1, "ERROR"), span(1, MS + 1), span(1, MS + 1)]), 0
            )
        ],
        now_ns=0,
    )
    job.collect(20 * S)
    assert (value("ERROR") - before[0], value("UNSET") - before[1]) == (1, 2)
    assert (
        REGISTRY.get_sample_value(
            "tailsift_sli_latency_seconds_total", {"service": "m-svc", "span_kind": "SERVER", "status": "UNSET"}
        )
        >= 0.002 - 1e-9
    )


def test_partials_of_different_relative_accuracy_merge_and_the_reader_says_so(messages, capsys, monkeypatch):
    """``sli.relative_accuracy`` changed between two runs (0.01 → 0.02): the old code raised
    ValueError("Cannot merge two DDSketches with different parameters") from DDSketch.merge, so
    ``tailsift sli`` crashed with a
    traceback. Now they merge into the coarser sketch, quantiles within the combined bound."""
    first, second = messages[:600], messages[600:]
    old_run, new_run = SliWindows(WINDOW, 0, relative_accuracy=0.01), SliWindows(WINDOW, 0, relative_accuracy=0.02)
    for w, part in ((old_run, first), (new_run, second)):
        for _, service, spans in part:
            w.add(0, service, spans)
    merged = merge_records(emit(old_run, "A", 0, True) + emit(new_run, "B", 0, True))
    per_service = roll_up(merged, lambda k: k[:1])
    truth = ground_truth(messages, WINDOW)
    for (service,), m in per_service.items():
        lat = sorted(x for (_, s, *_), t in truth.items() if s == service for x in t["lat"])
        assert m.span_count == len(lat)
        assert m.quantile_accuracy == pytest.approx(0.02 + 0.01 + 0.0002)
        for q in (0.5, 0.95):
            assert m.quantile(q) == pytest.approx(exact_quantile(lat, q), rel=m.quantile_accuracy)
    monkeypatch.setattr(sli_reader, "read_windows", lambda config, timeout: merged)
    args = argparse.Namespace(by="service", per_window=False, service=None, json=True, timeout=1.0)
    assert sli_reader.main(None, args) == 0
    out = capsys.readouterr()
    assert "different sli.relative_accuracy (0.01, 0.02)" in out.err
    assert all("quantile_accuracy" in line for line in out.out.splitlines())
