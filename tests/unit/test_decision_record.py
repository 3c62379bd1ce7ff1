"""The decision-log record encoder (``pipeline.codecs.avro_decision``) against fastavro.

The job writes one ``trace_decision.v1`` record per decided trace; the hand-written encoder must
produce exactly fastavro's bytes (restore, ``tailsift report``, the chaos verifier and the
simulator decode them with fastavro), for every field over its whole domain — including values
the fast path hands back to fastavro, where it must raise what fastavro raises."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codecs import avro
from pipeline.codecs.avro_decision import DecisionEncoder

LONG = st.integers(-(1 << 63), (1 << 63) - 1)
# around the varint length steps and the 32/64-bit edges, where hand-written varints go wrong
EDGY_LONG = st.one_of(
    LONG,
    st.sampled_from([0, -1, 1, 63, 64, -64, -65, 127, 128, (1 << 31) - 1, -(1 << 31), (1 << 63) - 1, -(1 << 63)]),
)
INT = st.integers(-(1 << 31), (1 << 31) - 1)
TEXT = st.text(max_size=40)  # any code point except lone surrogates (fastavro refuses those too)
PROBABILITY = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.05, 1e-300, 5e-324]),
    st.integers(-(1 << 53), 1 << 53),
)


def fastavro_bytes(fields: dict) -> bytes:
    return avro.encode(avro.TRACE_DECISION, fields)


def as_fields(
    trace_id, keep, policy, reason, probability, threshold, dry, at, partition, offsets, through, trigger=""
) -> dict:
    return {
        "trace_id": trace_id,
        "keep": keep,
        "policy": policy,
        "reason": reason,
        "probability": probability,
        "threshold": threshold,
        "dry_run_kept": dry,
        "decided_at_unix_nano": at,
        "input_partition": partition,
        "emitted_offsets": sorted(offsets),
        "processed_through": through,
        "trigger": trigger,
    }


ARGS = dict(
    trace_id=st.binary(min_size=16, max_size=16),
    keep=st.booleans(),
    policy=TEXT,
    reason=TEXT,
    probability=PROBABILITY,
    threshold=st.one_of(st.none(), EDGY_LONG),
    dry=st.one_of(st.none(), st.booleans()),
    at=EDGY_LONG,
    partition=INT,
    offsets=st.lists(EDGY_LONG, max_size=8),
    through=EDGY_LONG,
    trigger=st.one_of(st.sampled_from(["", "decision_wait", "backlog_bound", "memory_bound"]), TEXT),
)


@settings(max_examples=600, deadline=None)
@given(**ARGS)
def test_same_bytes_as_fastavro(
    trace_id, keep, policy, reason, probability, threshold, dry, at, partition, offsets, through, trigger
):
    encoder = DecisionEncoder()
    args = (trace_id, keep, policy, reason, probability, threshold, dry, at, partition, offsets, through, trigger)
    expected = fastavro_bytes(as_fields(*args))
    assert encoder.encode(*args) == expected
    # again: the memoized middle part and the remembered time must give the same bytes
    assert encoder.encode(*args) == expected
    decoded = avro.decode(avro.TRACE_DECISION, expected)
    assert decoded["trace_id"] == trace_id and decoded["emitted_offsets"] == sorted(offsets)
    assert decoded["trigger"] == trigger


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(*ARGS.values()), min_size=2, max_size=6))
def test_one_encoder_over_many_records(records):
    """The memo is keyed so that no record borrows another's bytes (0.0 and -0.0 are one dict key
    but two encodings; consecutive records at different times)."""
    encoder = DecisionEncoder()
    for args in records:
        assert encoder.encode(*args) == fastavro_bytes(as_fields(*args))


@pytest.mark.parametrize(
    "field,first,second",
    [
        ("probability", 0.0, -0.0),
        ("probability", -0.0, 0.0),
        ("probability", 1, 1.0),
        ("probability", math.inf, -math.inf),
        ("threshold", 1, True),
        ("threshold", True, 1),
        ("dry_run_kept", True, 1),
        ("dry_run_kept", 1, True),
        ("dry_run_kept", False, 0),
    ],
)
def test_values_equal_as_keys_still_encode_as_fastavro(field, first, second):
    """Values one dict key holds (0.0 and -0.0, True and 1) must not share a memoized encoding."""
    encoder = DecisionEncoder()
    for value in (first, second):
        fields = as_fields(bytes(range(16)), True, "p", "r", 1.0, None, None, 5, 0, [], -1)
        fields[field] = value
        args = list(fields.values())
        try:
            expected: bytes | type[BaseException] = fastavro_bytes(fields)
        except Exception as exc:  # noqa: BLE001 - whatever fastavro raises, the encoder must raise too
            expected = type(exc)
        if isinstance(expected, bytes):
            assert encoder.encode(*args) == expected
        else:
            with pytest.raises(expected):
                encoder.encode(*args)


@pytest.mark.parametrize(
    "field,value",
    [
        ("trace_id", b"\x01" * 15),  # not 16 bytes
        ("decided_at_unix_nano", 1 << 63),  # past 64 bits
        ("input_partition", 1 << 31),  # past 32 bits
        ("emitted_offsets", [1, 1 << 64]),
        ("policy", "\ud800"),  # a lone surrogate: not UTF-8
        ("threshold", 1 << 64),
        ("probability", 1 << 1100),  # an int no double holds
        ("trigger", "\udfff"),
        ("trigger", 7),  # not a string
    ],
)
def test_outside_the_fast_path_behaves_as_fastavro(field, value):
    fields = as_fields(bytes(range(16)), False, "p", "r", 1.0, None, None, 7, 2, [3], -1)
    fields[field] = value
    try:
        expected: bytes | type[BaseException] = fastavro_bytes(fields)
    except Exception as exc:  # noqa: BLE001 - whatever fastavro raises, the encoder must raise too
        expected = type(exc)
    args = [fields[k] for k in ("trace_id", "keep", "policy", "reason", "probability", "threshold", "dry_run_kept")]
    args += [fields["decided_at_unix_nano"], fields["input_partition"], fields["emitted_offsets"]]
    args += [fields["processed_through"], fields["trigger"]]
    if isinstance(expected, bytes):
        assert DecisionEncoder().encode(*args) == expected
    else:
        with pytest.raises(expected):
            DecisionEncoder().encode(*args)


def earlier_version() -> dict:
    """``trace_decision.v1`` as it was before ``trigger`` was appended."""
    schema = avro.raw_schema(avro.TRACE_DECISION)
    assert schema["fields"][-1]["name"] == "trigger"
    return {**schema, "fields": schema["fields"][:-1]}


def test_the_trigger_round_trips_and_keeps_fastavros_bytes():
    """The trigger a decision was released by (its tailsift_decision_points_total label) is the
    record's last field: written by the encoder, read back by fastavro with the current schema."""
    args = (bytes(range(16)), False, "", "not_sampled", 1.0, None, None, 1_700_000_000 * 10**9, 4, [], -1)
    encoder = DecisionEncoder()
    for trigger in ("backlog_bound", "decision_wait", "backlog_bound", ""):  # the memo, both ways
        value = encoder.encode(*args, trigger=trigger)
        assert value == fastavro_bytes(as_fields(*args, trigger))
        assert avro.decode(avro.TRACE_DECISION, value)["trigger"] == trigger


def test_a_record_written_before_the_trigger_reads_with_an_empty_one():
    """The decision log is compacted and restored on every assignment: after an upgrade it still
    holds records written without ``trigger``. They are schemaless, so the current schema alone
    would read past their end (EOF) and restore would skip every one of them; read with the
    earlier version they take the default, \"\" (not known)."""
    import io

    import fastavro

    old = fastavro.parse_schema(earlier_version())
    fields = as_fields(bytes(range(16)), True, "errors", "status", 1.0, None, None, 5, 2, [3, 9], -1)
    del fields["trigger"]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old, fields)
    value = buf.getvalue()
    with pytest.raises(Exception):  # what the current schema alone makes of it
        fastavro.schemaless_reader(io.BytesIO(value), avro.parsed_schema(avro.TRACE_DECISION), None)
    decoded = avro.decode(avro.TRACE_DECISION, value)
    assert decoded == {**fields, "trigger": ""}
    # a truncated record of either version is still refused, not read as something else
    for broken in (value[:-1], DecisionEncoder().encode(*fields.values(), trigger="decision_wait")[:-3]):
        with pytest.raises(Exception):
            avro.decode(avro.TRACE_DECISION, broken)
