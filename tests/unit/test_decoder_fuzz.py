"""Fuzz the ingest decode: arbitrary bytes must never crash the job, only dead-letter."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codecs import avro
from pipeline.config_privacy import PrivacyConfig
from pipeline.job import Received
from pipeline.privacy import build_protector
from tests.spans import batch_bytes, span
from tests.support.jobs import make_job

# protection on, so the fuzzed input also runs through it when its trace is kept
PROTECTOR = build_protector(PrivacyConfig(), environ={"TAILSIFT_TOKEN_KEYS": "fuzz:" + "11" * 32})
VALID = batch_bytes(b"\x07" * 16, "svc", [span(0, 5, "ERROR", parent=None)], {"user.email": "a@b.c"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        # mutations of a valid record: truncation, bit flips, appended junk
        st.integers(min_value=0, max_value=len(VALID) - 1).map(lambda n: VALID[:n]),
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(min_value=1, max_value=255)).map(
            lambda t: VALID[: t[0]] + bytes([VALID[t[0]] ^ t[1]]) + VALID[t[0] + 1 :]
        ),
        st.binary(min_size=1, max_size=20).map(lambda b: VALID + b),
    )
)
def test_any_bytes_are_either_processed_or_dead_lettered(value):
    job = make_job("fuzz", PROTECTOR, privacy={"enabled": True}, assemble={"decision_wait_ms": 0})
    try:
        key = avro.decode_batch(value)["trace_id"]
    except Exception:  # noqa: BLE001
        key = b"k"
    job.ingest([Received(0, 0, key, value, "ref")], now_ns=0)
    out = job.collect(10**18, flush_all_windows=True)
    job.delivered(out.records)
    # whatever happened, the message is accounted for exactly once and becomes committable
    assert [h.ref for h in job.ready()] == ["ref"]
    dead = [r for r in out.records if r.topic == "spans.deadletter"]
    assert len(dead) <= 1
    if dead:
        record = avro.decode(avro.DEAD_LETTER, dead[0].value)
        assert record["value_size"] == len(value) and record["reason"]
