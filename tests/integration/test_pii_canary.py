"""PII canaries on the real broker: planted in every trace, found raw nowhere the job writes.

The generator plants canary values (an e-mail, a user id, a Luhn-valid card, a client IP, a JWT in
free text) in every trace; a hand-made trace adds them to a span name, a status message, an event
and a resource; the chaos suite's planted trace puts them everywhere else a producer can (an
e-mail and a user id as attribute keys, an IP in ``host.ip``, a user id in free text and in the
trace state — all four left the job raw before keys, infrastructure values, user ids and trace
states were protected); poison messages carry them into the dead-letter path. Every trace is kept
(always_sample), so every canary reaches the protector. Afterwards every output topic, the job's
log and its /metrics text are scanned for the raw values — and the tokens the rules promise are
looked for in traces.kept.
"""

from __future__ import annotations

import os
import random
import urllib.request

import pytest
from confluent_kafka import Producer

from operators.privacy import KeyRing, Tokenizer
from pipeline.chaos import canaries
from pipeline.chaos.fuzz import encode
from pipeline.codecs import avro
from pipeline.demo import run_config
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.jobproc import JobProcess
from pipeline.privacy import PII_AUDIT
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration

K0, K1 = os.urandom(32), os.urandom(32)
# this test's own values (the chaos suite plants others), built the same way
C = canaries.Canaries.make("piiq7x", 90417, 77)
EMAIL, UID, CARD, IP, JWT = C.email, C.uid, C.card, C.ip, C.jwt
RAW = C.raw()


def _handmade_batch(trace_id: bytes) -> bytes:
    """One error span with canaries where the generator puts none: name, status, event, resource."""
    detail = avro.encode_detail(
        {
            "status_message": f"profile of {EMAIL} from {IP} failed",
            "attributes": {"app.note": f"session for {EMAIL} jwt {JWT}", "user.id": UID},
            "events": [
                {
                    "time_unix_nano": 2,
                    "name": "exception",
                    "attributes": {"exception.message": f"charge {CARD} declined"},
                }
            ],
            "links": [],
        }
    )
    return avro.encode_span_batch(
        {
            "trace_id": trace_id,
            "service": "profile",
            "spans": [
                {
                    "span_id": os.urandom(8),
                    "parent_span_id": None,
                    "name": f"GET /users/{UID}/profile",
                    "kind": "SERVER",
                    "start_time_unix_nano": 1_000,
                    "end_time_unix_nano": 2_000_000,
                    "status_code": "ERROR",
                    "status_message": "",
                    "trace_state": "",
                    "detail": detail,
                }
            ],
            "resource": {"service.name": "profile", "owner.email": EMAIL},
            "scope_name": "",
        }
    )


def test_no_canary_leaves_the_job_raw(kafka_bootstrap, unique_name, tmp_path, monkeypatch):
    monkeypatch.setenv("TAILSIFT_TOKEN_KEYS", f"k0:{K0.hex()},k1:{K1.hex()}")
    path, cfg = run_config(
        kafka_bootstrap,
        f"pii-{unique_name}",
        tmp_path,
        assemble={"decision_wait_ms": 1500},
        sli={"window_seconds": 2, "grace_seconds": 1},
        sampling={"policies": [{"name": "all", "type": "always_sample"}]},
        privacy={"enabled": True, "keys": {"active": "k1"}},
    )
    assert cfg.privacy.enabled and "pii_audit" in cfg.topics.all()
    assert all(r.status == "created" for r in create_topics(cfg))
    job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
    try:
        job.wait_ready(kafka_bootstrap, cfg.kafka.group_id)
        stats = produce(
            kafka_bootstrap,
            cfg.topics.spans_raw.name,
            count=120,
            duration_s=None,
            rate=None,
            config=GeneratorConfig(seed=5, error_rate=0.2, canaries=C.generator_attributes()),
            progress=False,
        )
        hand_tid = os.urandom(16)
        real = _handmade_batch(hand_tid)
        p = Producer({"bootstrap.servers": kafka_bootstrap})
        p.produce(cfg.topics.spans_raw.name, key=hand_tid, value=real)
        planted_tid = os.urandom(16)
        planted = encode(canaries.planted_batch(random.Random(1), planted_tid, C), "avro")
        p.produce(cfg.topics.spans_raw.name, key=planted_tid, value=planted)
        for poison in (f"not avro {EMAIL} {CARD} {IP}".encode(), real[:-7]):  # dead letters
            p.produce(cfg.topics.spans_raw.name, key=os.urandom(16), value=poison)
        p.flush(10)
        job.wait_drained(stats.spans + 2)
        metrics_text = urllib.request.urlopen(job.metrics_url, timeout=10).read().decode()
    finally:
        assert job.stop() is not None
    log_text = (tmp_path / "job.log").read_text(errors="replace")

    outputs: dict[str, list[tuple[bytes, bytes]]] = {}
    for key, topic in cfg.topics.all().items():
        if key == "spans_raw":
            continue  # the input (it holds the canaries by construction)
        outputs[key] = [(k or b"", v or b"") for _, _, k, v in read_all(kafka_bootstrap, topic.name)]
    assert outputs["traces_kept"] and outputs["sli_windows"] and outputs["pii_audit"]
    assert len(outputs["deadletter"]) == 2

    # 1. nothing raw anywhere
    places = {f"topic {k}": b"\n".join(k_ + b"\n" + v_ for k_, v_ in v) for k, v in outputs.items()}
    places["job log"] = log_text.encode()
    places["/metrics"] = metrics_text.encode()
    leaks = [
        f"{what} in {where}" for where, blob in places.items() for what, raw in RAW.items() if raw.encode() in blob
    ]
    assert not leaks, leaks

    # 2. tokens where the rules say tokenize (active key k1), redaction markers elsewhere
    tok = Tokenizer(KeyRing({"k0": K0, "k1": K1}, active="k1"))
    kept = b"\n".join(v for _, v in outputs["traces_kept"])
    assert tok.token(UID).encode() in kept  # user.id / enduser.id
    assert tok.token(EMAIL).encode() in kept  # user.email, the whole address (no domain by default)
    assert b"canary-mail.test" not in kept  # no e-mail domain leaves with the defaults
    assert tok.token(IP).encode() in kept  # client.address
    assert b"[REDACTED]" in kept and b"[REDACTED:jwt]" in kept
    assert Tokenizer(KeyRing({"k0": K0})).token(UID).encode() not in kept  # made with the active key only
    trace = next(avro.decode(avro.KEPT_TRACE, v) for k, v in outputs["traces_kept"] if k == hand_tid)
    span = trace["batches"][0]["spans"][0]
    assert span["name"] == "GET /users/{id}/profile"
    assert span["status_message"] == f"profile of {tok.token(EMAIL)} from {tok.token(IP)} failed"
    assert span["events"][0]["attributes"]["exception.message"] == "charge [REDACTED:card] declined"
    assert trace["batches"][0]["resource"]["owner.email"] == tok.token(EMAIL)
    planted_trace = next(avro.decode(avro.KEPT_TRACE, v) for k, v in outputs["traces_kept"] if k == planted_tid)
    (planted_span,) = planted_trace["batches"][0]["spans"]
    assert planted_span["attributes"][tok.token(EMAIL)] == "key is an email"
    assert planted_trace["batches"][0]["resource"]["host.ip"] == tok.token(IP)
    assert planted_span["trace_state"].startswith(f"shop={tok.token('u:' + UID)},")

    # 3. one audit record per kept record: counts only
    audits = [avro.decode(PII_AUDIT, v) for _, v in outputs["pii_audit"]]
    assert len(audits) == len(outputs["traces_kept"])
    assert all(a["key_id"] == "k1" and a["counts"] for a in audits)
    assert all(k.startswith(("rule:", "detector:")) for a in audits for k in a["counts"])
    totals: dict[str, int] = {}
    for a in audits:
        for k, n in a["counts"].items():
            totals[k] = totals.get(k, 0) + n
    assert totals["rule:user-email"] >= 120 and totals["rule:card-number"] >= 120 and totals["detector:jwt"] >= 120
    assert 'tailsift_pii_detections_total{detector="jwt"}' in metrics_text
