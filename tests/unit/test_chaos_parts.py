"""The chaos suite's pure parts: figure limits and relaxing, the ground truth, the hostile
message factory (each kind is what it says), the canary locator."""

from __future__ import annotations

import random
from collections import Counter

from pipeline.chaos import canaries, fuzz
from pipeline.chaos.figures import Figure, ScenarioResult
from pipeline.chaos.truth import Truth
from pipeline.codecs import avro, otlp


def test_figure_limits_and_relaxing():
    assert Figure("x", 0, "== 0").ok and not Figure("x", 1, "== 0").ok
    assert Figure("x", 5, "<= 5").ok and not Figure("x", 6, "<= 5").ok
    assert Figure("x", 1, "> 0").ok and not Figure("x", 0, "> 0").ok
    assert Figure("x", 123, "").ok  # reported, not judged
    r = ScenarioResult("fuzz avro")
    r.add("not dead-lettered: time_zero", 3, "== 0")
    r.add("spans duplicated", 1, "== 0")
    r.relax(["fuzz *.not dead-lettered: *"])
    assert [f.name for f in r.missed] == ["spans duplicated"]  # only the named pattern is relaxed
    assert not r.ok


def test_truth_counts_spans_and_sli_keys_per_trace():
    t = Truth()
    span = {"name": "GET /users/123", "kind": "SERVER", "status_code": "ERROR"}
    t.add_batches(b"t" * 16, [{"service": "a", "spans": [{**span, "span_id": b"s1" * 4}]}])
    t.add_batches(b"t" * 16, [{"service": "a", "spans": [{**span, "span_id": b"s2" * 4, "status_code": "OK"}]}])
    tr = t.traces[b"t" * 16]
    assert tr.span_count == 2 and t.spans == 2 and tr.has_error
    assert tr.span_set() == {b"s1" * 4, b"s2" * 4}
    assert t.sli_spans == Counter(
        {("a", "GET /users/{id}", "SERVER", "ERROR"): 1, ("a", "GET /users/{id}", "SERVER", "OK"): 1}
    )
    assert sum(t.sli_errors.values()) == 1


def test_hostile_messages_are_what_they_say():
    for fmt in ("avro", "otlp_proto"):
        msgs = list(fuzz.messages(400, fmt, seed=3))
        odd = [m for m in msgs if m.kind in fuzz.DATA_KINDS]  # odd but valid, beside the 400 hostile
        assert len(msgs) - len(odd) == 400 and len(odd) > 0
        kinds = Counter(m.kind for m in msgs)
        assert kinds["tombstone"] == 40 and kinds["unkeyed_garbage"] == 40
        assert all(m.value is None for m in msgs if m.kind == "tombstone")
        assert all(m.key is None for m in msgs if m.kind == "unkeyed_garbage")
        assert all(not fuzz.still_valid(m.value, fmt) for m in msgs if m.kind in ("random_bytes", "empty_value"))
        # hostile fields ride in well-encoded messages: the decoder alone takes most of them, the
        # job's checks (which still_valid applies) none
        fields = dict(fuzz.field_cases(random.Random(1), fmt))
        if fmt == "avro":
            assert avro.decode_batch(fields["time_zero"]) and avro.decode_batch(fields["attrs_10000"])
        else:
            assert otlp.decode_traces(fields["time_zero"]) and otlp.decode_traces(fields["attrs_10000"])
        assert not any(fuzz.still_valid(value, fmt) for value in fields.values())
        assert len(fields["attr_1mib"]) > fuzz.MIB
    odd = dict(fuzz.field_cases(random.Random(1), "otlp_proto"))["odd_trace_id_len"]
    req = otlp.parse_request(odd)
    assert len(req.resource_spans[0].scope_spans[0].spans[0].trace_id) == 15


def test_canary_locator_finds_values_and_keys():
    batch = canaries.planted_batch(random.Random(2), b"\x01" * 16)
    where = canaries.locate(batch)
    assert any(w.startswith(".spans[].attributes{key}") for w in where)
    assert any(w.startswith(".resource.host.ip") for w in where)
    assert canaries.hits(b"nothing here") == []
    assert canaries.locate({"a": ["clean", b"bytes"]}) == set()
