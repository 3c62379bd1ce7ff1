"""Condition-style policies: attributes (lazy), span count, tracestate, probabilistic with salt / rv."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import randomness
from operators.policies.base import Action
from operators.policies.boolean_attribute import BooleanAttributePolicy
from operators.policies.numeric_attribute import NumericAttributePolicy
from operators.policies.probabilistic import ProbabilisticPolicy
from operators.policies.span_count import SpanCountPolicy
from operators.policies.status_code import StatusCodePolicy
from operators.policies.string_attribute import StringAttributePolicy
from operators.policies.trace_state import TraceStatePolicy
from operators.trace import TraceView
from operators.tracestate import explicit_randomness, ot_fields, with_threshold
from pipeline.codecs import avro
from tests.spans import span

TID = bytes(range(16))


def enc(attrs):
    return avro.encode_detail({"status_message": "", "attributes": attrs, "events": [], "links": []})


def view(*attr_sets, **kw):
    spans = []
    for i, attrs in enumerate(attr_sets):
        s = span(parent=None if i == 0 else b"p" * 8, service=kw.get("service", "svc"))
        s["detail"] = enc(attrs)
        spans.append(s)
    return TraceView(kw.get("tid", TID), spans, decode_detail=avro.decode_detail)


def test_string_attribute_exact_regex_invert_missing_and_arrays():
    exact = StringAttributePolicy("s", "http.route", ("/cart", "/pay"))
    assert exact.evaluate(view({"http.route": "/cart"})) is not None
    assert exact.evaluate(view({"http.route": "/cart/x"})) is None
    assert exact.evaluate(view({})) is None  # missing attribute: no match
    assert exact.evaluate(view({"http.route": 7})) is None  # not a string
    assert exact.evaluate(view({"x": 1}, {"http.route": ["/a", "/pay"]})) is not None  # array element, 2nd span
    rx = StringAttributePolicy("r", "url", (r"^/api/v\d+/",), enabled_regex_matching=True)
    assert rx.evaluate(view({"url": "/api/v2/items"})) is not None
    assert rx.evaluate(view({"url": "/web/api/v2/"})) is None
    inv = StringAttributePolicy("i", "http.route", ("/health",), invert_match=True)
    assert inv.evaluate(view({"http.route": "/health"})) is None
    assert inv.evaluate(view({"http.route": "/cart"})) is not None
    assert inv.evaluate(view({})) is not None  # nothing matches → inverted keeps


def test_bad_regex_fails_when_the_policy_is_built_and_in_config():
    import re

    from pipeline import config

    with pytest.raises(re.error):
        StringAttributePolicy("r", "k", ("((",), enabled_regex_matching=True)
    with pytest.raises(config.ConfigError, match=r"sampling.policies.0\(r\).*invalid regular expression"):
        config.parse(
            {
                "sampling": {
                    "policies": [
                        {
                            "name": "r",
                            "type": "string_attribute",
                            "key": "k",
                            "values": ["(("],
                            "enabled_regex_matching": True,
                        }
                    ]
                }
            }
        )


def test_header_fields_never_decode_and_attributes_decode_once_per_span():
    t = view({"http.route": "/a"}, {"http.route": "/b"}, service="checkout")
    assert StringAttributePolicy("svc", "service.name", ("checkout",)).evaluate(t) is not None
    assert StatusCodePolicy("e").evaluate(t) is None
    assert ProbabilisticPolicy("p", 50).evaluate(t) is not None
    assert t.decoded_details == 0
    StringAttributePolicy("r", "http.route", ("/b",)).evaluate(t)
    StringAttributePolicy("r2", "http.route", ("/zzz",)).evaluate(t)
    assert t.decoded_details == 2  # each span once, then cached


def test_corrupt_detail_means_no_attributes_not_an_error():
    s = span(parent=None)
    s["detail"] = b"\xff\xff\xff"
    t = TraceView(TID, [s], decode_detail=avro.decode_detail)
    assert StringAttributePolicy("s", "k", ("v",)).evaluate(t) is None
    assert t.attributes(s) == {}


def test_numeric_attribute_bounds_types_and_invert():
    p = NumericAttributePolicy("n", "http.status_code", min_value=500, max_value=599)
    assert p.evaluate(view({"http.status_code": 500})) is not None
    assert p.evaluate(view({"http.status_code": 599.0})) is not None
    assert p.evaluate(view({"http.status_code": 600})) is None
    assert p.evaluate(view({"http.status_code": "503"})) is None  # strings are not numbers
    assert p.evaluate(view({"http.status_code": True})) is None
    assert p.evaluate(view({})) is None
    assert NumericAttributePolicy("lo", "n", min_value=10).evaluate(view({"n": 10**12})) is not None
    inv = NumericAttributePolicy("i", "n", max_value=5, invert_match=True)
    assert inv.evaluate(view({"n": 3})) is None and inv.evaluate(view({"n": 9})) is not None


def test_boolean_attribute():
    p = BooleanAttributePolicy("b", "cache.hit", False)
    assert p.evaluate(view({"cache.hit": False})) is not None
    assert p.evaluate(view({"cache.hit": True})) is None
    assert p.evaluate(view({"cache.hit": 0})) is None  # 0 is not False here
    assert p.evaluate(view({})) is None
    assert BooleanAttributePolicy("b", "cache.hit", False, invert_match=True).evaluate(view({})) is not None


def test_span_count_bounds_are_inclusive():
    p = SpanCountPolicy("c", min_spans=2, max_spans=3)
    assert p.evaluate(view({})) is None
    assert p.evaluate(view({}, {})) is not None
    assert p.evaluate(view({}, {}, {})) is not None
    assert p.evaluate(view({}, {}, {}, {})) is None


def test_status_code_unset_and_ok():
    assert StatusCodePolicy("u", frozenset({"UNSET"})).evaluate(TraceView(TID, [span(status="UNSET")])) is not None
    assert StatusCodePolicy("u", frozenset({"UNSET"})).evaluate(TraceView(TID, [span(status="OK")])) is None


def test_trace_state_policy_matches_member_values_exactly():
    p = TraceStatePolicy("ts", "shop", frozenset({"vip", "canary"}))

    def t(ts):
        s = span(parent=None)
        s["trace_state"] = ts
        return TraceView(TID, [s])

    assert p.evaluate(t("ot=th:8,shop=vip")) is not None
    assert p.evaluate(t("shop=vipx")) is None
    assert p.evaluate(t("")) is None
    assert p.evaluate(t("other=vip")) is None


def test_tracestate_rv_is_the_randomness_and_th_is_written_and_merged():
    rv = 0xFFFFFFFFFFFFFF  # maximal randomness: kept at any probability
    s = span(parent=None)
    s["trace_state"] = f"ot=rv:{rv:014x},vendor=a"
    tid = bytes(16)  # low bits zero: would never be kept without rv
    t = TraceView(tid, [s])
    assert explicit_randomness(s["trace_state"]) == rv and t.randomness == rv
    assert ProbabilisticPolicy("p", 0.001).evaluate(t).sampled
    assert explicit_randomness("ot=rv:zz") is None and explicit_randomness("ot=rv:123") is None
    out = with_threshold("vendor=a,ot=rv:00000000000001", randomness.threshold(0.25))
    assert out.startswith("ot=th:c;rv:00000000000001") and out.endswith("vendor=a")
    # an upstream head-sampling threshold at 10 % (stricter) survives a 25 % tail decision
    up = randomness.threshold_hex(randomness.threshold(0.1))
    assert ot_fields(with_threshold(f"ot=th:{up}", randomness.threshold(0.25)))["th"] == up
    assert ot_fields(with_threshold("", randomness.threshold(0.5))) == {"th": "8"}


def test_salted_sampling_is_deterministic_independent_and_near_its_rate():
    rng = random.Random(3)
    ids = [rng.randbytes(16) for _ in range(20_000)]
    plain = ProbabilisticPolicy("p", 10)
    salted = ProbabilisticPolicy("s", 10, hash_salt="tier-2")
    a = [plain.evaluate(TraceView(t, [span()])).sampled for t in ids]
    b = [salted.evaluate(TraceView(t, [span()])).sampled for t in ids]
    assert b == [salted.evaluate(TraceView(t, [span()])).sampled for t in ids]
    assert 1_800 < sum(b) < 2_200
    both = sum(x and y for x, y in zip(a, b))
    assert 100 < both < 300  # independent: about 1 % of traces, not 10 % as nested samplers would give
    assert salted.evaluate(TraceView(ids[0], [span()])).source == "salt:tier-2"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.floats(1e-6, 1.0), st.floats(1e-6, 1.0), st.text(min_size=1, max_size=8))
def test_salted_sampling_nests_within_its_own_salt(tid, p1, p2, salt):
    low, high = sorted((p1, p2))
    t = TraceView(tid, [span()])
    if ProbabilisticPolicy("a", low * 100, salt).evaluate(t).sampled:
        assert ProbabilisticPolicy("b", high * 100, salt).evaluate(t).sampled


def test_keep_verdicts_are_keep_actions():
    assert StatusCodePolicy("e").evaluate(TraceView(TID, [span(status="ERROR")])).action is Action.KEEP
