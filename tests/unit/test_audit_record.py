"""The PII audit record encoder (``pipeline.codecs.avro_audit``) against fastavro
(``pipeline.privacy.audit_record``).

The job writes one ``pii_audit.v1`` record per kept trace while privacy is on; readers decode it
with fastavro, so the hand-written encoder must write exactly fastavro's bytes for every field over
its whole domain — the memoized counts map in whatever order the counts came — and, for values it
hands back to fastavro, raise what fastavro raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codecs import avro
from pipeline.codecs.avro_audit import AuditEncoder
from pipeline.privacy import PII_AUDIT, audit_record

LONG = st.integers(-(1 << 63), (1 << 63) - 1)
EDGY_LONG = st.one_of(
    LONG,
    st.sampled_from([0, -1, 1, 63, 64, -64, -65, 127, 128, (1 << 31) - 1, -(1 << 31), (1 << 63) - 1, -(1 << 63)]),
)
INT = st.one_of(st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from([0, 1, 63, 64, -(1 << 31), (1 << 31) - 1]))
NAMES = st.one_of(st.sampled_from(["rule:user-id", "detector:email", "rule:url", ""]), st.text(max_size=20))
COUNTS = st.dictionaries(NAMES, EDGY_LONG, max_size=5)
TRACE_ID = st.binary(min_size=16, max_size=16)
ENCODER = AuditEncoder()  # shared across examples: its memo is exercised as the job's is


@settings(max_examples=300, deadline=None)
@given(trace_id=TRACE_ID, counts=COUNTS, key_id=st.text(max_size=12), now=EDGY_LONG, late=st.booleans(), spans=INT)
def test_the_bytes_are_fastavros(trace_id, counts, key_id, now, late, spans):
    want = audit_record(trace_id, counts, key_id, now, late, spans)
    assert ENCODER.encode(trace_id, counts, key_id, now, late, spans) == want
    assert ENCODER.encode(trace_id, counts, key_id, now, late, spans) == want  # remembered
    assert avro.decode(PII_AUDIT, want)["counts"] == counts


def test_the_same_counts_in_another_order_are_not_confused():
    """The map is written in the dict's order: the memo is keyed by it (a dict key would not be)."""
    tid = bytes(16)
    a, b = {"rule:a": 1, "rule:b": 2}, {"rule:b": 2, "rule:a": 1}
    assert ENCODER.encode(tid, a, "k", 5) == audit_record(tid, a, "k", 5)
    assert ENCODER.encode(tid, b, "k", 5) == audit_record(tid, b, "k", 5) != audit_record(tid, a, "k", 5)


@pytest.mark.parametrize(
    "trace_id, counts, key_id, now, late, spans",
    [
        (bytes(15), {}, "k", 1, False, 0),  # not 16 bytes
        (bytes(16), {"a": 1 << 63}, "k", 1, False, 0),  # a count beyond a long
        (bytes(16), {"a": 1}, "k", 1, False, 1 << 31),  # a span count beyond an int
        (bytes(16), {"a": 1}, "k", 1 << 63, False, 0),  # a time beyond a long
        (bytes(16), {"\ud800": 1}, "k", 1, False, 0),  # a lone surrogate
        (bytes(16), {"a": 1.5}, "k", 1, False, 0),  # not an int
        (bytes(16), {"a": True}, "k", 1, 1, 0),  # a bool count, an int flag
    ],
)
def test_what_the_fast_path_does_not_take_is_fastavros(trace_id, counts, key_id, now, late, spans):
    try:
        want = audit_record(trace_id, counts, key_id, now, late, spans)
    except Exception as exc:  # noqa: BLE001 - fastavro refuses it: the encoder must refuse it alike
        with pytest.raises(type(exc)):
            ENCODER.encode(trace_id, counts, key_id, now, late, spans)
    else:
        assert ENCODER.encode(trace_id, counts, key_id, now, late, spans) == want
