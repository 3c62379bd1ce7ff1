"""The native SLI windows (``native/src/sli.rs``, ``job.core: native``) against the Python reference
(``operators.sli.SliWindows``, ``job.core: python``): fed the same message batches — valid spans,
hostile ones (negative, zero and sub-resolution latencies, hour-long ones, more services and
operations than the bounds admit, text with ids and non-ASCII) and random interleavings of
``due``, ``flush_all`` and ``revoke`` — both must return the same ``add_groups`` counts and emit the
same partials: the same records (counts, min/max/sum, quantiles, the sketch bin for bin: offset
and zero-padded counts of the DDSketch dense store), the same holds in the same order, and the
native Avro bytes must be fastavro's bytes of the Python record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.sli import SliWindows, sketch_to_record, window_record
from pipeline.codecs import avro, native
from pipeline.job.sli import native_sli_windows

if not native.AVAILABLE:
    pytest.skip("the native core is not built (no Rust toolchain)", allow_module_level=True)

S = 1_000_000_000
MS = 1_000_000
BASE = 1_700_000_000 * S
KINDS = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]
STATUSES = ["UNSET", "OK", "ERROR"]
SERVICES = ["checkout", "cart", "frontend", "db", "é-service", "svc-4711", ""]
NAMES = ["GET /users/123", "GET /users/456", "POST /cart", "query", "span-ü", "id 9f86d081884c7d65", "", "x" * 300]


class Hold:
    """A commit hold stand-in: only its identity matters to the windows."""


latency_ns = st.one_of(
    st.just(0),
    st.integers(-3_600 * S, -1),  # clock skew: the end before the start
    st.integers(1, 1_000),  # at or under the sketch's resolution
    st.integers(1, 10 * S),
    st.integers(10 * S, 3_600 * S),
)
span = st.fixed_dictionaries(
    {
        "end_offset": st.integers(0, 60 * S),
        "latency": latency_ns,
        "name": st.sampled_from(NAMES),
        "kind": st.sampled_from(KINDS),
        "status_code": st.sampled_from(STATUSES),
        "root": st.booleans(),
    }
)
add = st.tuples(
    st.just("add"),
    st.integers(0, 3),
    st.lists(st.tuples(st.sampled_from(SERVICES), st.lists(span, max_size=12)), min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(0, 4)),
)
due = st.tuples(st.just("due"), st.integers(0, 90 * S), st.booleans())
revoke = st.tuples(st.just("revoke"), st.sets(st.integers(0, 3), max_size=2))


def header(s: dict) -> dict:
    end = BASE + s["end_offset"]
    return {
        "end_time_unix_nano": end,
        "start_time_unix_nano": end - s["latency"],
        "name": s["name"],
        "kind": s["kind"],
        "status_code": s["status_code"],
        "parent_span_id": None if s["root"] else b"p" * 8,
        "span_id": b"s" * 8,
    }


def assert_same_windows(py_windows: list, nat_windows: list, now_ns: int) -> None:
    assert len(nat_windows) == len(py_windows)
    for p, n in zip(py_windows, nat_windows):
        record = window_record(p, "w", now_ns)
        assert window_record(n, "w", now_ns) == record
        assert n.encode("w", now_ns) == avro.encode(avro.SLI_WINDOW, record)
        assert [id(h) for h in n.holds] == [id(h) for h in p.holds]
        assert (n.service, n.operation, n.span_kind, n.status) == (p.service, p.operation, p.span_kind, p.status)
        assert (n.window_start_ns, n.window_end_ns, n.span_count, n.error_count, n.root_count) == (
            p.window_start_ns,
            p.window_end_ns,
            p.span_count,
            p.error_count,
            p.root_count,
        )
        assert (n.sum_ms, n.max_ms, n.partials, n.partitions) == (p.sum_ms, p.max_ms, p.partials, sorted(p.partitions))
        # the sketch the SLO book reads: the Python store itself, not a re-binning of it
        ps, ns = p.fold(), n.sketch
        assert sketch_to_record(ns) == sketch_to_record(ps)
        assert (ns._store.min_key, ns._store.max_key, ns._store.count) == (
            ps._store.min_key,
            ps._store.max_key,
            ps._store.count,
        )
        assert (ns.count, ns._zero_count) == (ps.count, ps._zero_count)
        for q in (0.0, 0.5, 0.99, 1.0):
            assert ns.get_quantile_value(q) == ps.get_quantile_value(q)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(add, add, add, due, revoke), min_size=1, max_size=25),
    st.sampled_from([S, 10 * S]),
    st.sampled_from([0, S]),
    st.sampled_from([0.01, 0.02, 0.05]),
    st.booleans(),
)
def test_native_windows_emit_the_python_partials_bin_for_bin(actions, window_ns, grace_ns, accuracy, protected):
    """Before this change there was no native twin: the job counted every span in Python
    (``add_groups``, the largest Python function of the job core's profile)."""
    label = (lambda s: s.upper()[:6]) if protected else None  # a protector's dimension: many-to-one
    args = (window_ns, grace_ns, accuracy, 3, 2)
    py, nat = SliWindows(*args, service_label=label), native_sli_windows(*args, service_label=label)
    holds = [Hold() for _ in range(5)]
    for action in actions:
        if action[0] == "add":
            _, partition, groups, h = action
            hold = holds[h] if h is not None else None
            batch = [(service, [header(s) for s in spans]) for service, spans in groups]
            assert nat.add_groups(partition, batch, hold) == py.add_groups(partition, batch, hold)
        elif action[0] == "due":
            now = BASE + action[1]
            assert_same_windows(py.due(now, action[2]), nat.due(now, action[2]), now)
        else:
            assert nat.revoke(action[1]) == py.revoke(action[1])
        assert len(nat) == len(py)
    now = BASE + 100 * S
    assert_same_windows(py.due(now, True), nat.due(now, True), now)
    for service in SERVICES:
        assert nat.service_label(service) == py.service_label(service)


def test_past_the_memo_and_the_bounds_both_fold_names_alike():
    """5,000 distinct span names (ids in names: unbounded) under one service and 1,200 services:
    past ``max_operations`` / ``max_services`` both fold into ``__other__`` / ``__overflow__``,
    across the memo's reset at 4,096 names, with the same counts."""
    py, nat = SliWindows(10 * S, 0), native_sli_windows(10 * S, 0)
    for i in range(5_000):
        spans = [header({"end_offset": i * MS, "latency": i * 997, "name": f"op {i} x", "kind": "SERVER",
                         "status_code": "OK", "root": True})]  # fmt: skip
        assert nat.add(0, "svc", spans) == py.add(0, "svc", spans)
    for i in range(1_200):
        spans = [header({"end_offset": 0, "latency": MS, "name": "q", "kind": "CLIENT", "status_code": "ERROR",
                         "root": False})]  # fmt: skip
        nat.add(1, f"service-{i}", spans)
        py.add(1, f"service-{i}", spans)
    now = BASE + 100 * S
    py_windows, nat_windows = py.due(now, True), nat.due(now, True)
    assert {w.operation for w in nat_windows if w.service == "svc"} >= {"__other__"}
    assert any(w.service == "__overflow__" for w in nat_windows)
    assert_same_windows(py_windows, nat_windows, now)


def test_a_rewind_discards_the_uncommitted_windows():
    """``Job.reset`` (a failed transaction) revokes every partition: the native windows forget
    what they counted since the last emit, as the Python ones do."""
    nat = native_sli_windows(10 * S, 0)
    spans = [header({"end_offset": 0, "latency": MS, "name": "q", "kind": "SERVER", "status_code": "OK", "root": True})]
    nat.add(0, "a", spans)
    nat.add(2, "a", spans)
    assert nat.revoke([0, 1, 2]) == 2
    assert len(nat) == 0
    assert nat.due(BASE + 100 * S, True) == []


@pytest.mark.parametrize("accuracy", [0.01, 0.02, 0.05])
def test_every_bin_value_is_the_python_mappings(accuracy):
    """Per window three spans: 0, a latency from 1 ns to ~3 hours (steps of about a bin) and 3
    hours: p50 is that latency's bin value ``2 ** (key / multiplier) * 2 / (1 + gamma)``, not
    clamped to the extremes. The first native build wrote ``2.0.powf(x)``, which LLVM compiles to
    ``exp2``: p50 of a 0.0005 ms latency came out one bit off the Python's (0.0004953214142542727
    against ...726)."""
    py, nat = SliWindows(S, 0, accuracy), native_sli_windows(S, 0, accuracy)
    for i in range(1_300):
        spans = [
            header(
                {
                    "end_offset": i * S,
                    "latency": latency,
                    "name": "q",
                    "kind": "SERVER",
                    "status_code": "OK",
                    "root": True,
                }
            )  # fmt: skip
            for latency in (0, int(10 ** (i / 100)), 3 * 3_600 * S)
        ]
        py.add(0, "svc", spans)
        nat.add(0, "svc", spans)
    now = BASE + 10_000 * S
    py_windows, nat_windows = py.due(now, True), nat.due(now, True)
    assert len({w.quantiles((0.5,))[0] for w in py_windows}) > 250  # distinct bins, unclamped
    assert_same_windows(py_windows, nat_windows, now)


def test_hostile_cardinality_does_not_grow_the_native_label_table():
    """20,000 distinct span names (one service) and 5,000 distinct services, over bounds of 3
    services and 2 operations: the windows keep only the admitted labels. The first native build
    interned every sanitized name and service label before checking the bound — one string per
    distinct hostile name, for the life of the process (300,000 distinct names grew the process's
    peak RSS by 76.5 MiB; 0.2 MiB now)."""
    nat = native_sli_windows(10 * S, 0, max_services=3, max_operations=2)
    for i in range(20_000):
        name = f"op-{i}-{'x' * (i % 7)}"  # no digits-only segment to fold: every name is its own label
        spans = [header({"end_offset": 0, "latency": MS, "name": name, "kind": "SERVER", "status_code": "OK",
                         "root": True})]  # fmt: skip
        nat.add(0, "svc", spans)
        nat.add(0, f"service-{i % 5_000}-{'y' * (i % 3)}", spans)
    # 3 services + __overflow__, 2 operations each (+ __other__), kind and status texts, ERROR
    assert nat.labels_held <= 4 + 4 * 2 + 1 + 3
    assert {w.operation for w in nat.due(BASE + 100 * S, True)} >= {"__other__"}
