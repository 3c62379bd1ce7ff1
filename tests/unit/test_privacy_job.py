"""Protection inside the job core, the audit records, log lines, and `tailsift run` without a key."""

import logging
import os
import subprocess
import sys
from pathlib import Path

from operators.privacy import KeyRing, Tokenizer
from pipeline import config
from pipeline.codecs import avro
from pipeline.job import Job, Received
from pipeline.privacy import PII_AUDIT, build_protector, install_log_protection, uninstall_log_protection
from tests.spans import batch_bytes, span
from tests.support import jobs
from tests.support.jobs import MS, make_config
from tests.support.jobs import records as by_topic

KEY = bytes(range(32))
ENV = {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()}
TOK = Tokenizer(KeyRing({"k1": KEY}))
ROOT = Path(__file__).resolve().parents[2]
EMAIL, CARD, IP, UID = "canary.x@canary.test", "4111 1111 1111 1111", "203.0.113.9", "u-canary-4242"


def make_job(**privacy):
    cfg = make_config(
        job={"processing_guarantee": "at_least_once"},  # window-close semantics; exactly_once: test_exactly_once_job
        sampling={"policies": [{"name": "errors", "type": "status_code"}]},
        privacy={"enabled": True, **privacy},
    )
    return Job(cfg, worker_id="test", protector=build_protector(cfg.privacy, ENV))


def poisoned_message(offset, trace_id):
    attrs = {
        "user.email": EMAIL,
        "user.id": UID,
        "client.address": IP,
        "payment.card.number": CARD,
        "free.text": f"{EMAIL} paid with {CARD}",
    }
    s = span(1, 10 * MS, "ERROR", parent=None, name=f"GET /users/{UID}/orders")
    return Received(0, offset, trace_id, batch_bytes(trace_id, "front", [s], attrs), ref=offset)


def test_kept_trace_is_protected_and_audited_and_commit_waits_for_the_audit():
    job = make_job()
    tid = os.urandom(16)
    job.ingest([poisoned_message(0, tid)], now_ns=0)
    out = job.collect(2000 * MS)
    (kept,) = by_topic(out, "traces.kept")
    (audit,) = by_topic(out, "pii.audit")
    for raw in (EMAIL, CARD, IP, UID, CARD.replace(" ", "")):
        assert raw.encode() not in kept.value and raw.encode() not in audit.value
    trace = avro.decode(avro.KEPT_TRACE, kept.value)
    s = trace["batches"][0]["spans"][0]
    assert s["name"] == "GET /users/{id}/orders"
    a = s["attributes"]
    assert a["user.email"] == TOK.token(EMAIL) and a["user.id"] == TOK.token(UID)
    assert a["client.address"] == TOK.token(IP) and a["payment.card.number"] == "[REDACTED]"
    assert a["free.text"] == f"{TOK.token(EMAIL)} paid with [REDACTED:card]"
    assert a["sampling.policy"] == "errors"
    rec = avro.decode(PII_AUDIT, audit.value)
    assert rec["trace_id"] == tid and rec["key_id"] == "k1" and rec["span_count"] == 1
    assert rec["counts"] == {
        "rule:span-name": 1,
        "rule:user-email": 1,
        "rule:user-id": 1,
        "rule:client-ip": 1,
        "rule:card-number": 1,
        "detector:email": 1,
        "detector:card": 1,
    }
    # the input is committable only when the kept trace AND its audit record are acknowledged
    out2 = job.collect(11_000 * MS)  # closes the SLI window too
    job.delivered(by_topic(out2, "sli.windows") + [kept])
    assert job.ready() == []
    job.delivered([audit])
    assert [h.offset for h in job.ready()] == [0]


def test_late_spans_are_protected_too():
    job = make_job()
    tid = os.urandom(16)
    job.ingest([poisoned_message(0, tid)], now_ns=0)
    job.collect(2000 * MS)
    job.ingest([poisoned_message(1, tid)], now_ns=3000 * MS)
    out = job.collect(3001 * MS)
    (late,) = by_topic(out, "traces.kept")
    assert avro.decode(avro.KEPT_TRACE, late.value)["late"]
    assert EMAIL.encode() not in late.value and UID.encode() not in late.value
    (audit,) = by_topic(out, "pii.audit")
    assert avro.decode(PII_AUDIT, audit.value)["late"]


def test_audit_off_and_privacy_off():
    job = make_job(audit=False)
    job.ingest([poisoned_message(0, os.urandom(16))], now_ns=0)
    out = job.collect(2000 * MS)
    assert by_topic(out, "pii.audit") == [] and len(by_topic(out, "traces.kept")) == 1
    plain = jobs.make_job(
        privacy={"enabled": False}, sampling={"policies": [{"name": "errors", "type": "status_code"}]}
    )
    assert plain.protector is None


def test_privacy_is_on_by_default(monkeypatch):
    assert config.parse({}).privacy.enabled
    monkeypatch.setenv("TAILSIFT_TOKEN_KEYS", "d1:" + "ab" * 32)
    assert Job(config.parse({}), worker_id="t").protector is not None


def test_dead_letters_carry_no_payload():
    job = make_job()
    secret = f"garbage {EMAIL} {CARD}".encode()
    job.ingest([Received(0, 0, b"k", secret, 0)], now_ns=0)
    (dl,) = by_topic(job.collect(1), "spans.deadletter")
    assert EMAIL.encode() not in dl.value and b"4111" not in dl.value


def test_log_lines_are_protected():
    job = make_job()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("tailsift.test.privacy")
    handler = Keep()
    logger.addHandler(handler)
    install_log_protection(job.protector)
    try:
        logger.warning("user %s from %s", EMAIL, IP)
        try:
            raise ValueError(f"bad card {CARD}")
        except ValueError:
            logger.exception("failed for %s", UID)
    finally:
        uninstall_log_protection()
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert EMAIL not in text and IP not in text and CARD not in text
    assert TOK.token(EMAIL) in text and "[REDACTED:card]" in text and "ValueError" in text
    logging.getLogger("tailsift.test.privacy").warning("after %s", "uninstall")  # factory restored


def test_run_without_key_exits_nonzero_before_connecting(tmp_path):
    cfg = tmp_path / "c.yaml"
    # an address nothing listens on: reaching Kafka would fail differently (and later)
    cfg.write_text("kafka: {bootstrap_servers: '127.0.0.1:9'}\nprivacy: {enabled: true, keys: {env: TS_TEST_KEYS}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TS_TEST_KEYS", "KAFKA_BOOTSTRAP_SERVERS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "-c", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "TS_TEST_KEYS" in proc.stderr and "token keys are missing" in proc.stderr
    assert "cannot reach Kafka" not in proc.stderr

    cfg.write_text(
        f"kafka: {{bootstrap_servers: '127.0.0.1:9'}}\n"
        f"privacy: {{enabled: true, keys: {{file: {tmp_path / 'nokeys'}}}}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "-c", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "nokeys" in proc.stderr and "privacy.keys.file" in proc.stderr


def test_keys_never_in_config_dump():
    cfg = config.parse({"privacy": {"enabled": True}})
    dumped = repr(cfg.model_dump())
    assert "TAILSIFT_TOKEN_KEYS" in dumped and KEY.hex() not in dumped


def test_allowlist_mode_in_the_job_an_unlisted_attribute_never_reaches_the_output():
    job = make_job(mode="allowlist", allowed_keys=["http.*", "user.id"])
    tid = os.urandom(16)
    s = span(1, 10 * MS, "ERROR", parent=None, name="GET /x")
    attrs = {"http.request.method": "GET", "user.id": UID, "zz.unlisted.key": "zz-unlisted-value"}
    job.ingest([Received(0, 0, tid, batch_bytes(tid, "front", [s], attrs), ref=0)], now_ns=0)
    out = job.collect(2000 * MS)
    (kept,) = by_topic(out, "traces.kept")
    assert b"zz-unlisted" not in kept.value and b"zz.unlisted.key" not in kept.value
    a = avro.decode(avro.KEPT_TRACE, kept.value)["batches"][0]["spans"][0]["attributes"]
    assert a["http.request.method"] == "GET" and a["user.id"] == TOK.token(UID) and a["sampling.policy"] == "errors"
    (audit,) = by_topic(out, "pii.audit")
    assert avro.decode(PII_AUDIT, audit.value)["counts"]["rule:allowlist"] == 1


def test_log_protection_leaves_the_brokers_address_readable():
    """Before: every IP in a log line was tokenized, the broker's own address too — "cannot reach
    Kafka at tok:k1:…:9092" told an SRE nothing. The config's infrastructure addresses are left
    as they are; personal data in the same line is still protected."""
    from pipeline.privacy import infrastructure_addresses

    job = make_job()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    known = infrastructure_addresses("10.1.2.3:9092, broker-2.internal:9093,[fd00::7]:9094", "0.0.0.0")
    assert {"10.1.2.3:9092", "10.1.2.3", "broker-2.internal", "fd00::7", "0.0.0.0"} <= set(known)
    logger = logging.getLogger("tailsift.test.privacy.known")
    handler = Keep()
    logger.addHandler(handler)
    install_log_protection(job.protector, known)
    try:
        logger.warning("cannot reach Kafka at %s: user %s from %s", "10.1.2.3:9092", EMAIL, IP)
        logger.warning("broker %s down", "fd00::7")
    finally:
        uninstall_log_protection()
        logger.removeHandler(handler)
    assert "cannot reach Kafka at 10.1.2.3:9092: " in records[0]
    assert EMAIL not in records[0] and IP not in records[0] and TOK.token(EMAIL) in records[0]
    assert records[1] == "broker fd00::7 down"
