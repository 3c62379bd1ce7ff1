"""PII canaries planted in every place a producer can put text (the chaos suite's planted trace:
attribute values and keys, span name, status message, events, links, resource, scope, trace
state), through the job core, in every pair of input and output formats: nothing raw in the kept
record, and the protected forms are the ones the README promises.

The old protector (measured by the chaos canary scan, before this test) let out raw: an e-mail
used as an attribute *key* (keys were never scanned), the IP in the resource attribute
``host.ip`` (``host.*`` was kept unscanned), and the user id in free text (no detector knew a user
id: status message, attribute values, events, links) and in the trace state's vendor value."""

from __future__ import annotations

import random

import pytest

from operators.privacy import KeyRing, Tokenizer
from operators.privacy.tracestate import protect_tracestate
from pipeline.chaos import canaries, fuzz
from pipeline.codecs import avro, otlp
from pipeline.job import Job, Received
from pipeline.privacy import PII_AUDIT, build_protector
from tests.support.jobs import S, make_config
from tests.support.jobs import records as by_topic

KEY = bytes(range(32))
TOK = Tokenizer(KeyRing({"k1": KEY}))
T0 = 1_700_000_000 * S  # the planted trace's start


def _kept(ingest: str, emit: str) -> tuple[bytes, dict, dict]:
    """(kept record value, the planted batch as the job wrote it, audit counts)."""
    cfg = make_config(
        ingest={"format": ingest},
        emit={"format": emit},
        sampling={"policies": [{"name": "all", "type": "always_sample"}]},
        privacy={"enabled": True},
    )
    job = Job(cfg, worker_id="t", protector=build_protector(cfg.privacy, {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()}))
    rng = random.Random(3)
    tid = rng.randbytes(16)
    batch = canaries.planted_batch(rng, tid)
    job.ingest([Received(0, 0, tid, fuzz.encode(batch, ingest), ref=0)], now_ns=T0 + S)
    out = job.collect(T0 + 10 * S)
    (kept,) = by_topic(out, cfg.topics.traces_kept.name)
    (audit,) = by_topic(out, cfg.topics.pii_audit.name)
    if emit == "avro":
        (written,) = avro.decode(avro.KEPT_TRACE, kept.value)["batches"]
    else:
        (trace,) = otlp.decode_traces(kept.value, emit).values()
        (written,) = otlp.kept_batches(trace)
    return kept.value, written, avro.decode(PII_AUDIT, audit.value)["counts"]


@pytest.mark.parametrize(
    "ingest,emit", [("avro", "avro"), ("avro", "otlp_proto"), ("otlp_proto", "otlp_proto"), ("otlp_proto", "avro")]
)
def test_no_canary_leaves_from_any_place(ingest, emit):
    value, batch, counts = _kept(ingest, emit)
    assert canaries.locate(batch) == set()
    assert canaries.hits(value) == []
    (span,) = batch["spans"]
    # a key holding an e-mail: tokenized, the value still there under the token
    assert span["attributes"][TOK.token(canaries.CHAOS.email)] == "key is an email"
    assert span["attributes"][f"user.{TOK.token(canaries.CHAOS.uid)}"] is True
    # the user id in free text: the word before it stays, the id is tokenized
    assert f"id {TOK.token(canaries.CHAOS.uid)} card [REDACTED:card]" in span["status_message"]
    assert f"id {TOK.token(canaries.CHAOS.uid)}" in span["events"][0]["attributes"]["raw"]
    assert f"id {TOK.token(canaries.CHAOS.uid)}" in span["links"][0]["attributes"]["from"]
    # resource: host.ip is scanned like any value (still tokenized, so joinable)
    assert batch["resource"]["host.ip"] == TOK.token(canaries.CHAOS.ip)
    assert batch["scope_name"] == TOK.token(f"scope-{canaries.CHAOS.email}")  # "-" is e-mail text
    # trace state: each vendor value tokenized whole
    mail = canaries.CHAOS.email.replace("@", "-at-")
    assert span["trace_state"] == f"shop={TOK.token('u:' + canaries.CHAOS.uid)},mail={TOK.token(mail)}"
    assert counts["detector:user_id"] >= 3 and counts["rule:trace-state"] >= 1


def test_trace_state_keeps_ot_sampling_fields_and_tokenizes_vendor_values():
    counts: dict[str, int] = {}
    out = protect_tracestate(
        "ot=th:8;rv:0123456789abcd;x:u-55170,dd=s:1;t.usr.id:u-55170,Bad Key=1,congo=t61rcWkgMzE", TOK.token, counts
    )
    assert out == f"ot=th:8;rv:0123456789abcd,dd={TOK.token('s:1;t.usr.id:u-55170')},congo={TOK.token('t61rcWkgMzE')}"
    assert counts == {"rule:trace-state": 4}  # ot's x, two vendor values, the member with a bad key
    assert protect_tracestate(out, TOK.token, counts) == out  # protected twice: unchanged


def test_a_key_with_a_drop_detector_drops_the_attribute_and_redact_detectors_tokenize_keys():
    cfg = make_config(privacy={"enabled": True, "detectors": {"email": {"action": "drop"}}})
    p = build_protector(cfg.privacy, {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()})
    counts: dict[str, int] = {}
    card = "4111 1111 1111 1111"
    out = p.protect_attributes({"a@example.com": 1, f"card {card}": 2, f"old card {card}": 3, "plain": 4}, counts)
    # card's value action is redact; in a key it is tokenized, so the two keys stay apart
    assert out == {f"card {TOK.token(card)}": 2, f"old card {TOK.token(card)}": 3, "plain": 4}
    assert counts == {"detector:email": 1, "detector:card": 2}


def test_pod_ips_are_kept_raw_only_by_a_rule_of_ones_own():
    env = {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()}
    default = build_protector(make_config(privacy={"enabled": True}).privacy, env)
    assert default.protect_attributes({"k8s.pod.ip": "10.42.0.7"}, {}) == {"k8s.pod.ip": TOK.token("10.42.0.7")}
    rule = {"name": "pod-ip", "keys": ["k8s.pod.ip"], "action": "keep", "scan": False}
    own = build_protector(make_config(privacy={"enabled": True, "rules": [rule]}).privacy, env)
    assert own.protect_attributes({"k8s.pod.ip": "10.42.0.7"}, {}) == {"k8s.pod.ip": "10.42.0.7"}
