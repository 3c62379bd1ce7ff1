"""The aggregation stage's pure window logic: partials merge exactly (bins equal one sketch over
all spans), a re-read partial is a no-op, an emitted window's marker still recognises it, the
memory bound closes the oldest windows first."""

from __future__ import annotations

import struct

import pytest

from operators.sli import SliWindows, sketch_from_record, window_record
from pipeline.aggregate import windows as W
from pipeline.codecs import avro
from tests.unit.test_sli_accuracy import generated_messages

S = 1_000_000_000


def roundtrip(record: dict) -> dict:
    return avro.decode(avro.SLI_WINDOW, avro.encode(avro.SLI_WINDOW, record))


@pytest.fixture(scope="module")
def partials_and_whole():
    """The same spans as partials of three workers (flushed every 100 messages) and as one window
    set computed by a single SliWindows over everything."""
    messages = generated_messages(400, seed=91)
    workers = [SliWindows(2 * S, 0) for _ in range(3)]
    whole = SliWindows(2 * S, 0)
    partials = []
    for i, (trace_id, service, spans) in enumerate(messages):
        workers[trace_id[-1] % 3].add(trace_id[-1] % 6, service, spans)
        whole.add(0, service, spans)
        if i % 100 == 99:
            for n, w in enumerate(workers):
                partials += [roundtrip(window_record(a, f"w{n}", 0)) for a in w.due(0, flush_all=True)]
    for n, w in enumerate(workers):
        partials += [roundtrip(window_record(a, f"w{n}", 0)) for a in w.due(0, flush_all=True)]
    one = {W.window_key(r): r for r in (roundtrip(window_record(a, "one", 0)) for a in whole.due(0, flush_all=True))}
    return partials, one


def merge_all(partials) -> dict[bytes, W.OpenWindow]:
    out: dict[bytes, W.OpenWindow] = {}
    for offset, r in enumerate(partials):
        k = W.window_key(r)
        if k in out:
            assert W.merge_partial(out[k], r, offset)
        else:
            out[k] = W.start_window(r, 0, offset)
    return out


def test_partials_of_three_workers_merge_to_exactly_one_windows_counts_and_bins(partials_and_whole):
    partials, one = partials_and_whole
    merged = merge_all(partials)
    assert len(partials) > 2 * len(one)  # really partials
    assert set(merged) == set(one)
    for k, r in one.items():
        m = W.final_record(merged[k], 123)
        assert (m["span_count"], m["error_count"], m["root_count"]) == (
            r["span_count"],
            r["error_count"],
            r["root_count"],
        )
        assert (m["latency_ms"]["min"], m["latency_ms"]["max"]) == (r["latency_ms"]["min"], r["latency_ms"]["max"])
        assert m["latency_ms"]["sum"] == pytest.approx(r["latency_ms"]["sum"])
        a, b = m["sketch"], r["sketch"]
        nz = lambda s: {s["bin_offset"] + i: c for i, c in enumerate(s["bin_counts"]) if c}  # noqa: E731
        assert nz(a) == nz(b) and a["zero_count"] == b["zero_count"]  # bin for bin
        for name in ("p50", "p99"):
            assert m["latency_ms"][name] == r["latency_ms"][name]
        assert m["worker"] == "aggregate" and m["emitted_at_unix_nano"] == 123


def test_a_re_read_partial_is_not_merged_twice_and_a_closed_marker_remembers_it(partials_and_whole):
    partials, _ = partials_and_whole
    r = partials[0]
    w = W.start_window(r, 2, 10)
    assert not W.merge_partial(w, r, 10)  # the same offset again
    assert W.merge_partial(w, r, 11)
    assert w.record["span_count"] == 2 * r["span_count"]
    marker = W.closed_marker(w)
    assert W.is_closed(marker) and W.closed_through(marker) == 11
    assert W.peek_end(marker) == (2, r["window_end_unix_nano"])
    packed = w.pack(lambda rec: avro.encode(avro.SLI_WINDOW, rec))
    assert not W.is_closed(packed)
    back = W.OpenWindow.unpack(packed, lambda v: avro.decode(avro.SLI_WINDOW, v))
    assert (back.partition, back.first_offset, back.last_offset) == (2, 10, 11)
    assert back.record["span_count"] == 2 * r["span_count"]


def test_sketches_of_another_accuracy_do_not_merge():
    a = {"relative_accuracy": 0.01, "zero_count": 0.0, "bin_offset": 5, "bin_counts": [1.0]}
    b = {"relative_accuracy": 0.02, "zero_count": 0.0, "bin_offset": 5, "bin_counts": [1.0]}
    with pytest.raises(W.IncompatiblePartial):
        W.merge_sketch_bins(a, b)


def test_bins_align_by_key_across_offsets():
    a = {"relative_accuracy": 0.01, "zero_count": 1.0, "bin_offset": 10, "bin_counts": [1.0, 2.0]}
    b = {"relative_accuracy": 0.01, "zero_count": 2.0, "bin_offset": 8, "bin_counts": [4.0, 0.0, 0.0, 3.0, 5.0]}
    W.merge_sketch_bins(a, b)
    assert a == {"relative_accuracy": 0.01, "zero_count": 3.0, "bin_offset": 8, "bin_counts": [4.0, 0.0, 1.0, 5.0, 5.0]}
    assert sketch_from_record(a).count == 18


def test_due_and_the_bound_take_the_oldest_windows_first():
    ends = [(b"c", 30), (b"a", 10), (b"b", 20)]
    assert W.due(ends, view_ns=25, grace_ns=5) == [b"a", b"b"]
    assert W.due(ends, view_ns=14, grace_ns=5) == []
    assert W.over_bound(ends, limit=1) == [b"a", b"b"]
    assert W.over_bound(ends, limit=3) == []


def test_emission_keys_name_the_window_and_its_first_partial():
    k = W.window_key(
        {
            "service": "s",
            "operation": "GET /x",
            "span_kind": "SERVER",
            "status": "OK",
            "window_start_unix_nano": 1,
            "window_end_unix_nano": 2,
        }
    )
    e = W.emission_key(k, 3, 42)
    assert W.key_of_emission(e) == k and e.endswith(b"\x1f3:42") and e != W.emission_key(k, 3, 43)
    assert struct.calcsize(">iqqq") == len(W.closed_marker(W.OpenWindow(0, 1, 2, {"window_end_unix_nano": 5})))
