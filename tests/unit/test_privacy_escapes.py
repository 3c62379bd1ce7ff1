"""PII that used to leave the job: producer attributes under tailsift's own prefixes, and the
domains of tokenized e-mail addresses."""

import os

import pytest

from pipeline.codecs import avro
from pipeline.job import Received
from tests.spans import batch_bytes, span
from tests.unit.test_privacy_job import CARD, EMAIL, MS, TOK, by_topic, make_job


def _kept_attributes(job, attrs, name="GET /x"):
    tid = os.urandom(16)
    s = span(1, 10 * MS, "ERROR", parent=None, name=name)
    job.ingest([Received(0, 0, tid, batch_bytes(tid, "front", [s], attrs), ref=0)], now_ns=20 * MS)
    (kept,) = by_topic(job.collect(2020 * MS), "traces.kept")
    return kept.value, avro.decode(avro.KEPT_TRACE, kept.value)["batches"][0]["spans"][0]["attributes"]


@pytest.mark.parametrize("mode", ["denylist", "allowlist"])
def test_producer_attributes_under_tailsift_prefixes_are_protected_not_exempt(mode):
    """The old code exempted every ``sampling.*`` / ``tailsift.*`` key from all rules, even the
    fail-closed allowlist: ``tailsift.customer`` = "<email> <card>" left raw in both modes, and a
    forged ``sampling.late`` passed as tailsift's own annotation."""
    extra = {"allowed_keys": ["http.*"]} if mode == "allowlist" else {}
    job = make_job(mode=mode, **extra)
    attrs = {
        "tailsift.customer": f"{EMAIL} {CARD}",
        "sampling.late": True,
        "sampling.adjusted_count": 1e6,
        "sampling.priority": "1",
    }
    raw, out = _kept_attributes(job, attrs)
    for secret in (EMAIL, CARD, CARD.replace(" ", "")):
        assert secret.encode() not in raw
    assert "tailsift.customer" not in out and "sampling.late" not in out
    assert out["sampling.adjusted_count"] == 1.0 and out["sampling.policy"] == "errors"  # tailsift's, added after
    if mode == "denylist":
        assert out["sampling.priority"] == "1"  # not one of tailsift's keys: protected like any attribute
    else:
        assert "sampling.priority" not in out  # not allowed: dropped like any unlisted key


def test_tailsift_detail_error_is_added_after_protection_even_in_allowlist_mode():
    """tailsift's own annotation on an undecodable span detail survives the allowlist (it is
    added after protection, not exempted by prefix)."""
    job = make_job(mode="allowlist", allowed_keys=["http.*"])
    tid = os.urandom(16)
    s = {k: v for k, v in span(1, 10 * MS, "ERROR", parent=None).items() if k != "service"}
    value = avro.encode_span_batch({"trace_id": tid, "service": "front", "spans": [{**s, "detail": b"\xff\xff\xff"}]})
    job.ingest([Received(0, 0, tid, value, ref=0)], now_ns=20 * MS)
    (kept,) = by_topic(job.collect(2020 * MS), "traces.kept")
    attrs = avro.decode(avro.KEPT_TRACE, kept.value)["batches"][0]["spans"][0]["attributes"]
    assert attrs["tailsift.detail_error"] == "undecodable span detail"


DOMAINS = ("corp-of-one.example", "mail-of-bob.example", "carol-family.example", "dave.example")


def _sdk_like_attributes():
    return {
        "user.email": "alice@corp-of-one.example",
        "email.to": "bob@mail-of-bob.example",
        "url.full": "https://shop.test/api/orders?email=carol%40carol-family.example&limit=5",
        "http.target": "/api/users?contact=bob@mail-of-bob.example",
        "url.query": "to=alice@corp-of-one.example",
        "url.path": "/mail/carol%40carol-family.example/inbox",
        "db.system": "postgresql",
        "db.statement": "SELECT * FROM users WHERE email = 'dave@dave.example'",
        "message": "sent to dave@dave.example",
    }


def test_no_email_domain_leaves_with_the_default_config():
    """The old default kept the real domain of every tokenized address
    (``tok:k1:…@corp-of-one.example``): a personal or small company domain identifies a person."""
    raw, out = _kept_attributes(make_job(), _sdk_like_attributes())
    for domain in DOMAINS:
        assert domain.encode() not in raw, domain
    assert out["user.email"] == TOK.token("alice@corp-of-one.example")
    assert out["email.to"] == TOK.token("bob@mail-of-bob.example")


def test_opt_in_domain_is_kept_only_when_it_is_a_hostname():
    """With ``token.email_format: true`` the domain is kept, but only a well-formed hostname: the
    old code passed whatever followed the last "@" through unscanned
    (``alice@example.com|ssn=078-05-1120`` → ``tok:…@example.com|ssn=078-05-1120``)."""
    job = make_job(token={"email_format": True})
    raw, out = _kept_attributes(
        job, {"user.email": "alice@example.com|ssn=078-05-1120", "enduser.email": "e@ok.example"}
    )
    assert b"078-05-1120" not in raw and b"example.com" not in raw
    assert out["user.email"] == TOK.token("alice@example.com|ssn=078-05-1120")
    assert out["enduser.email"] == TOK.token("e@ok.example") + "@ok.example"
