from collections import Counter

from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.service_graph import OVERFLOW, ServiceGraph
from pipeline.codecs import avro
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from tests.spans import span

MS = 1_000_000


def test_edges_from_parent_child_spans_across_services():
    g = ServiceGraph()
    root = span(1, 100 * MS, parent=None, kind="SERVER", service="frontend", span_id=b"r" * 8)
    client = span(1 * MS, 50 * MS, parent=b"r" * 8, kind="CLIENT", service="frontend", span_id=b"c" * 8)
    server = span(2 * MS, 40 * MS, "ERROR", parent=b"c" * 8, kind="SERVER", service="cart", span_id=b"s" * 8)
    inner = span(3 * MS, 4 * MS, parent=b"s" * 8, kind="INTERNAL", service="cart")
    producer = span(5 * MS, 6 * MS, parent=b"r" * 8, kind="PRODUCER", service="frontend", span_id=b"p" * 8)
    consumer = span(90 * MS, 99 * MS, parent=b"p" * 8, kind="CONSUMER", service="email", span_id=b"e" * 8)
    assert g.add_trace([root, client, server, inner, producer, consumer]) == 2
    edges = {(e.client, e.server): e for e in g.drain()}
    assert list(edges) == [("frontend", "cart"), ("frontend", "email")]
    assert edges["frontend", "cart"].requests == 1 and edges["frontend", "cart"].failed == 1
    assert edges["frontend", "email"].failed == 0
    assert edges["frontend", "cart"].latency_sum_ms == 38.0 and edges["frontend", "email"].latency_sum_ms == 9.0
    assert g.drain() == []


def test_edges_match_the_generator_call_graph_and_are_capped():
    gen = TraceGenerator(GeneratorConfig(seed=8))
    g = ServiceGraph()
    truth = Counter()
    for i in range(200):
        t = gen.trace(10**18 + i * 10**9)
        spans = []
        for value in t.encoded:
            b = avro.decode_batch(value)
            for s in b["spans"]:
                s["service"] = b["service"]
                spans.append(s)
        ids = {s["span_id"]: s for s in spans}
        for s in spans:
            p = ids.get(s["parent_span_id"])
            if p is not None and p["service"] != s["service"]:
                truth[(p["service"], s["service"])] += 1
        g.add_trace(spans)
    edges = {(e.client, e.server): e.requests for e in g.drain()}
    assert edges == dict(truth) and ("checkout", "payment") in edges
    capped = ServiceGraph(max_edges=2)
    for server in ("a", "b", "c", "d"):
        capped.add_trace([span(parent=None, service="x", span_id=b"1" * 8), span(parent=b"1" * 8, service=server)])
    assert {(e.client, e.server): e.requests for e in capped.drain()} == {
        ("x", "a"): 1,
        ("x", "b"): 1,
        (OVERFLOW, OVERFLOW): 2,
    }


def test_the_job_exposes_service_graph_counters():
    import os

    from prometheus_client import REGISTRY

    from pipeline.job import Received
    from tests.spans import batch_bytes
    from tests.support.jobs import make_job

    job = make_job()

    def value(name):
        return REGISTRY.get_sample_value(name, {"client": "gx", "server": "gy"}) or 0.0

    before = (
        value("tailsift_service_graph_requests_total"),
        value("tailsift_service_graph_request_failed_total"),
        value("tailsift_service_graph_request_server_seconds_total"),
    )
    tid = os.urandom(16)
    job.ingest(
        [
            Received(
                0, 0, tid, batch_bytes(tid, "gx", [span(1, 9 * MS, parent=None, kind="CLIENT", span_id=b"gx" * 4)]), 0
            ),
            Received(0, 1, tid, batch_bytes(tid, "gy", [span(1 * MS, 5 * MS, "ERROR", parent=b"gx" * 4)]), 1),
        ],
        now_ns=0,
    )
    job.collect(5 * 10**9)
    job.update_gauges()
    assert value("tailsift_service_graph_requests_total") - before[0] == 1
    assert value("tailsift_service_graph_request_failed_total") - before[1] == 1
    # the callee span took 4 ms (the sum is exact: DDSketch keeps an exact sum)
    assert abs(value("tailsift_service_graph_request_server_seconds_total") - before[2] - 0.004) < 1e-9


def test_edge_labels_are_capped_for_the_process_lifetime_not_per_drain():
    """The old cap counted only the edges since the last drain: drained once a tick, 2 new
    (client, server) pairs a tick became 2 new metric label sets a tick without end (observed:
    8 distinct labels after 4 drains with max_edges=2)."""
    g = ServiceGraph(max_edges=2)
    labels = set()
    for tick in range(4):
        for server in (f"s{tick}a", f"s{tick}b"):
            g.add_trace([span(parent=None, service="x", span_id=b"1" * 8), span(parent=b"1" * 8, service=server)])
        labels |= {(e.client, e.server) for e in g.drain()}
    assert labels == {("x", "s0a"), ("x", "s0b"), (OVERFLOW, OVERFLOW)}
    # an admitted pair keeps its own label later on
    g.add_trace([span(parent=None, service="x", span_id=b"1" * 8), span(parent=b"1" * 8, service="s0a")])
    assert [(e.client, e.server, e.requests) for e in g.drain()] == [("x", "s0a", 1)]


class _ReferenceGraph:
    """The service graph as it was before edges kept a latency sum instead of a DDSketch (a span
    dict walk per trace, a sketch ``add`` per request): the reference the faster one must equal.
    The latency sum is in whole nanoseconds, as the graph keeps it since the native core hands it
    per-pair sums (``add_pairs``): a float sum of milliseconds depended on the grouping in its
    last bits."""

    def __init__(self, max_edges, service_label=None):
        self.max_edges, self.service_label = max_edges, service_label
        self.edges, self._labelled = {}, set()

    def add_trace(self, spans):
        spans = list(spans)
        by_id = {s["span_id"]: s for s in spans}
        for child in spans:
            parent = by_id.get(child.get("parent_span_id"))
            if parent is None or parent["service"] == child["service"]:
                continue
            failed = child["status_code"] == "ERROR" or parent["status_code"] == "ERROR"
            latency = max(0, child["end_time_unix_nano"] - child["start_time_unix_nano"])
            key = (parent["service"], child["service"])
            if self.service_label is not None:
                key = (self.service_label(key[0]), self.service_label(key[1]))
            if key not in self._labelled:
                if len(self._labelled) >= self.max_edges:
                    key = (OVERFLOW, OVERFLOW)
                else:
                    self._labelled.add(key)
            edge = self.edges.get(key)
            if edge is None:
                edge = self.edges[key] = [0, 0, DDSketch(0.01), 0]
            edge[0] += 1
            edge[1] += failed
            edge[2].add(latency)
            edge[3] += latency

    def drain(self):
        out = {k: (e[0], e[1], e[3] / 1_000_000.0) for k, e in self.edges.items()}
        self.edges = {}
        return out


_IDS = [bytes([i]) * 8 for i in range(1, 9)]
_span = st.fixed_dictionaries(
    {
        "service": st.sampled_from(["a", "b", "c", "d", "e"]),
        "span_id": st.sampled_from(_IDS),  # duplicates: the last span with an ID is the parent
        "name": st.just("op"),
        "start_time_unix_nano": st.integers(0, 10**10),
        "end_time_unix_nano": st.integers(0, 10**10),  # before the start too: latency 0
        "status_code": st.sampled_from(["UNSET", "OK", "ERROR"]),
    },
    optional={"parent_span_id": st.one_of(st.none(), st.sampled_from(_IDS + [b"\xff" * 8]))},
)


@settings(max_examples=300, deadline=None)
@given(
    ticks=st.lists(st.lists(st.lists(_span, max_size=12), max_size=4), min_size=1, max_size=4),
    max_edges=st.integers(1, 12),
    merge_labels=st.booleans(),
)
def test_edges_equal_the_reference_graph_on_random_traces(ticks, max_edges, merge_labels):
    """Edges, request and failure counts and latency sums (bit for bit), overflow and label caps,
    drain by drain, equal those of the per-span-dict graph with a sketch per edge it replaced."""
    label = {"a": "A", "b": "A", "c": "C"}.get if merge_labels else None
    service_label = (lambda s: label(s, s)) if label else None
    fast, ref = ServiceGraph(max_edges, service_label), _ReferenceGraph(max_edges, service_label)
    for traces in ticks:
        for spans in traces:
            fast.add_trace(spans)
            ref.add_trace(spans)
        got = {(e.client, e.server): (e.requests, e.failed, e.latency_sum_ms) for e in fast.drain()}
        want = ref.drain()
        assert got == want and list(got) == list(want)


def test_edges_equal_the_reference_graph_on_generated_traces():
    gen = TraceGenerator(GeneratorConfig(seed=21))
    fast, ref = ServiceGraph(max_edges=5), _ReferenceGraph(max_edges=5)
    for i in range(300):
        spans = []
        for value in gen.trace(10**18 + i * 10**9).encoded:
            b = avro.decode_batch(value)
            spans += [dict(s, service=b["service"]) for s in b["spans"]]
        fast.add_trace(spans)
        ref.add_trace(spans)
        if i % 50 == 49:
            got = {(e.client, e.server): (e.requests, e.failed, e.latency_sum_ms) for e in fast.drain()}
            want = ref.drain()
            assert got == want and (OVERFLOW, OVERFLOW) in got
