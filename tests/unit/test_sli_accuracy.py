"""SLI windows against ground truth computed from the generator's own output: per (window, service,
operation, kind, status) counts exact, every reported quantile within 1 % of the exact one."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.privacy.sanitize import sanitize_span_name
from operators.sli import OVERFLOW_OPERATION, SliWindows
from pipeline.codecs import avro
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from tests.spans import span

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def generated_messages(n_traces: int, seed: int, spacing_ns: int = 20 * MS):
    gen = TraceGenerator(GeneratorConfig(seed=seed, error_rate=0.1, slow_rate=0.05))
    out = []
    for i in range(n_traces):
        trace = gen.trace(T0 + i * spacing_ns)
        for value in trace.encoded:
            batch = avro.decode_batch(value)
            out.append((trace.trace_id, batch["service"], batch["spans"]))
    return out


def ground_truth(messages, window_ns):
    truth = defaultdict(lambda: {"n": 0, "errors": 0, "roots": 0, "lat": []})
    for _, service, spans in messages:
        for s in spans:
            end = s["end_time_unix_nano"]
            key = (end - end % window_ns, service, sanitize_span_name(s["name"]), s["kind"], s["status_code"])
            t = truth[key]
            t["n"] += 1
            t["errors"] += s["status_code"] == "ERROR"
            t["roots"] += s["parent_span_id"] is None
            t["lat"].append(max(0.0, (end - s["start_time_unix_nano"]) / MS))
    return truth


def exact_quantile(sorted_values, q):
    return sorted_values[int(q * (len(sorted_values) - 1))]  # DDSketch's rank convention


def test_counts_exact_and_quantiles_within_one_percent_against_generator_ground_truth():
    window_ns = 2 * S
    messages = generated_messages(1_500, seed=21)
    w = SliWindows(window_ns=window_ns, grace_ns=0, relative_accuracy=0.01)
    for trace_id, service, spans in messages:
        w.add(trace_id[0] % 6, service, spans)
    got = {(a.window_start_ns, a.service, a.operation, a.span_kind, a.status): a for a in w.due(0, flush_all=True)}
    truth = ground_truth(messages, window_ns)
    assert set(got) == set(truth)
    assert sum(t["n"] for t in truth.values()) > 25_000 and any(t["errors"] for t in truth.values())
    checked = 0
    for key, t in truth.items():
        a = got[key]
        assert (a.span_count, a.error_count, a.root_count) == (t["n"], t["errors"], t["roots"]), key
        lat = sorted(t["lat"])
        assert a.max_ms == lat[-1] and a.min_ms == lat[0] and a.sum_ms == pytest.approx(sum(lat))
        for q in (0.5, 0.9, 0.95, 0.99):
            assert a.quantile(q) == pytest.approx(exact_quantile(lat, q), rel=0.01), (key, q)
            checked += 1
    assert checked > 400


def test_operation_names_are_sanitized_and_capped_per_service():
    w = SliWindows(window_ns=10 * S, grace_ns=0, max_operations=3)
    w.add(0, "api", [span(0, MS, name=f"GET /users/{i}") for i in range(50)])
    w.add(0, "api", [span(0, MS, name="POST /orders"), span(0, MS, name="GET /health"), span(0, MS, name="GET /x/y")])
    w.add(0, "db", [span(0, MS, name=f"op{i}") for i in range(3)])  # another service has its own budget
    ops = {(a.service, a.operation): a.span_count for a in w.due(0, flush_all=True)}
    assert ops == {
        ("api", "GET /users/{id}"): 50,
        ("api", "POST /orders"): 1,
        ("api", "GET /health"): 1,
        ("api", OVERFLOW_OPERATION): 1,
        ("db", "op0"): 1,
        ("db", "op1"): 1,
        ("db", "op2"): 1,
    }


def test_the_memo_of_raw_names_stays_bounded():
    w = SliWindows(window_ns=10 * S, grace_ns=0)
    for i in range(10_000):
        w.add(0, "api", [span(0, MS, name=f"GET /users/{i}")])
    assert len(w._op_memo["api"]) <= 4096
    (a,) = w.due(0, flush_all=True)
    assert (a.operation, a.span_count) == ("GET /users/{id}", 10_000)


def test_inline_bins_equal_the_ddsketch_add_path():
    from ddsketch import DDSketch

    from operators.sli import sketch_to_record

    values = [0.0, 1e-12, 0.001, 0.5, 1.0, 3.3, 250.0, 9_999.9]
    w = SliWindows(window_ns=10**15, grace_ns=0)
    w.add(0, "a", [span(0, int(v * MS)) for v in values])
    (a,) = w.due(0, flush_all=True)
    ref = DDSketch(0.01)
    for v in values:
        ref.add(int(v * MS) / MS)
    assert sketch_to_record(a.sketch) == sketch_to_record(ref)
    assert a.sketch.count == ref.count


def _reference_windows(messages, window_ns):
    """Per (service, window start, name, kind, status): the DDSketch ``add`` path and sequential
    sums, span by span — what ``SliWindows`` counted per service group before ``add_groups``."""
    from ddsketch import DDSketch

    out = {}
    for groups in messages:
        for service, spans in groups:
            for s in spans:
                end = s["end_time_unix_nano"]
                key = (service, end - end % window_ns, s["name"], s["kind"], s["status_code"])
                r = out.setdefault(key, [DDSketch(0.01), 0, 0, 0.0, float("inf"), 0.0])
                latency = max((end - s["start_time_unix_nano"]) / 1_000_000.0, 0.0)
                r[0].add(latency)
                r[1] += 1
                r[2] += s.get("parent_span_id") is None
                r[3] += latency
                r[4], r[5] = min(r[4], latency), max(r[5], latency)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b"]),
                st.lists(
                    st.tuples(
                        st.integers(0, 3 * 10**9),
                        st.integers(-(10**6), 2 * 10**9),
                        st.sampled_from(["x", "y"]),
                        st.sampled_from(["SERVER", "CLIENT"]),
                        st.sampled_from(["OK", "ERROR"]),
                        st.booleans(),
                    ),
                    max_size=6,
                ),
            ),
            min_size=1,
            max_size=4,
        ),
        max_size=8,
    )
)
def test_add_groups_equals_the_sketch_add_path_window_for_window(raw):
    """One call per message (``add_groups``, all its service groups) counts bin for bin, sum for
    sum what a DDSketch ``add`` per span did, per window and dimension; holds once per window."""
    from operators.sli import sketch_to_record

    window_ns = 10**9
    messages = [
        [
            (
                service,
                [
                    dict(span(end - lat, end, status, None if root else b"p" * 8, name=name), kind=kind)
                    for end, lat, name, kind, status, root in spans
                ],
            )
            for service, spans in groups
        ]
        for groups in raw
    ]
    w = SliWindows(window_ns=window_ns, grace_ns=0)
    holds = []
    for groups in messages:
        hold = object()
        holds.append((hold, w.add_groups(0, groups, hold)))
    got = {}
    for a in w.due(0, flush_all=True):
        got[(a.service, a.window_start_ns, a.operation, a.span_kind, a.status)] = (
            sketch_to_record(a.sketch),
            a.span_count,
            a.root_count,
            a.sum_ms,
            a.min_ms,
            a.max_ms,
            a.error_count,
        )
        for hold, _ in holds:
            assert a.holds.count(hold) <= 1
    want = {
        k: (sketch_to_record(r[0]), r[1], r[2], r[3], r[4], r[5], r[1] if k[4] == "ERROR" else 0)
        for k, r in _reference_windows(messages, window_ns).items()
    }
    assert got == want
    for groups, (_, touched) in zip(messages, holds):
        keys = {
            (service, s["end_time_unix_nano"] // window_ns, s["name"], s["kind"], s["status_code"])
            for service, spans in groups
            for s in spans
        }
        assert touched == len(keys)
