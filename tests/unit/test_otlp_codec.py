"""OTLP codec round trips with the OTel SDK's own encoder (opentelemetry-exporter-otlp-proto-common)."""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from operators.trace import TraceView
from pipeline.codecs import otlp

ATTRS = {
    "s": "text",
    "b": True,
    "i": -42,
    "d": 2.5,
    "sa": ["a", "b"],
    "ba": [True, False],
    "ia": [1, 2, 3],
    "da": [0.5, 1.5],
}


def sdk_spans(n_traces=2):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "checkout", "deployment.environment": "test", "host.cores": 4})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tailsift.tests", "1.2.3")
    for t in range(n_traces):
        with tracer.start_as_current_span(f"root{t}", kind=trace_api.SpanKind.SERVER, attributes=ATTRS) as root:
            root.add_event("cache.miss", {"key": "k1", "n": 3})
            with tracer.start_as_current_span(
                "db",
                kind=trace_api.SpanKind.CLIENT,
                links=[trace_api.Link(root.get_span_context(), {"link.kind": "follows"})],
            ) as child:
                child.set_status(trace_api.Status(trace_api.StatusCode.ERROR, "boom"))
    provider.shutdown()
    return exporter.get_finished_spans()


def canonical(req):
    """Spans by id with everything that must survive, order-independent."""
    out = {}
    for rs in req.resource_spans:
        res = otlp.attrs_to_py(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out[sp.span_id] = {
                    "trace_id": sp.trace_id,
                    "parent": sp.parent_span_id,
                    "name": sp.name,
                    "kind": sp.kind,
                    "start": sp.start_time_unix_nano,
                    "end": sp.end_time_unix_nano,
                    "status": (sp.status.code, sp.status.message),
                    "attrs": otlp.attrs_to_py(sp.attributes),
                    "flags": sp.flags,
                    "events": [(e.time_unix_nano, e.name, otlp.attrs_to_py(e.attributes)) for e in sp.events],
                    "links": [
                        (ln.trace_id, ln.span_id, ln.trace_state, otlp.attrs_to_py(ln.attributes)) for ln in sp.links
                    ],
                    "resource": res,
                    "scope": (ss.scope.name, ss.scope.version),
                    "schema": (rs.schema_url, ss.schema_url),
                }
    return out


@pytest.mark.parametrize("fmt", ["otlp_proto", "otlp_json"])
def test_sdk_request_round_trips_through_decode_split_and_encode(fmt):
    original = encode_spans(sdk_spans(3))
    value = otlp.serialize_request(original, fmt)
    traces = otlp.decode_traces(value, fmt)
    assert len(traces) == 3
    batches = [b for t in traces.values() for b in otlp.kept_batches(t)]
    back = otlp.parse_request(otlp.encode_request(batches, fmt), fmt)
    assert canonical(back) == canonical(original)
    assert len(canonical(original)) == 6


def test_headers_are_what_decisions_need_and_attributes_are_lazy():
    traces = otlp.decode_traces(encode_spans(sdk_spans(1)).SerializeToString())
    (trace,) = traces.values()
    root = next(s for s in trace.spans if s["parent_span_id"] is None)
    child = next(s for s in trace.spans if s["parent_span_id"] is not None)
    assert root["service"] == "checkout" and root["kind"] == "SERVER" and root["status_code"] == "UNSET"
    assert child["kind"] == "CLIENT" and child["status_code"] == "ERROR" and child["parent_span_id"] == root["span_id"]
    assert len(root["span_id"]) == 8 and root["end_time_unix_nano"] >= root["start_time_unix_nano"]
    view = TraceView(trace.trace_id, trace.spans, decode_detail=otlp.decode_detail)
    assert view.has_error and view.decoded_details == 0
    assert view.value(root, "i") == -42 and view.value(root, "sa") == ["a", "b"] and view.decoded_details == 1


def test_kvlist_and_nested_arrays_become_json_strings():
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    v = AnyValue()
    otlp.py_to_value({"a": 1, "b": ["x", b"\x01"]}, v)
    assert json.loads(otlp.value_to_py(v)) == {"a": 1, "b": ["x", "AQ=="]}


def test_split_request_keeps_one_trace_with_resource_and_scope():
    req = encode_spans(sdk_spans(2))
    traces = otlp.decode_traces(req.SerializeToString())
    for tid, trace in traces.items():
        part = otlp.parse_request(otlp.split_request(trace))
        canon = canonical(part)
        assert len(canon) == 2 and all(s["trace_id"] == tid for s in canon.values())
        assert all(s["scope"] == ("tailsift.tests", "1.2.3") for s in canon.values())
        assert (
            otlp.key_matches(tid, tid) and otlp.key_matches(tid.hex().encode(), tid) and not otlp.key_matches(None, tid)
        )


def test_bad_ids_are_rejected():
    req = encode_spans(sdk_spans(1))
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    with pytest.raises(otlp.InvalidTraceId):
        otlp.decode_traces(req.SerializeToString())
    with pytest.raises(Exception):
        otlp.decode_traces(b"\xff\xff\xff garbage")
