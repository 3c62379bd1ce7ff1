"""PII canaries: raw values planted in every place a producer can put text, and the scan for
them in every sink the job writes — output topics (keys and values), worker logs, /metrics."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass

from operators.privacy.luhn import luhn_check_digit

_JWT_HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # {"alg":"HS256","typ":"JWT"}


@dataclass(frozen=True)
class Canaries:
    """One set of canary values: raw PII no output may carry. Built per user (the chaos suite,
    the integration test) with its own values, so a hit names the run that planted it."""

    email: str
    uid: str
    card_digits: str  # 16 digits passing Luhn
    ip: str
    api_key: str
    jwt_payload: str
    jwt: str

    @property
    def card(self) -> str:
        """The card number as people write it, in groups of four."""
        return " ".join(self.card_digits[i : i + 4] for i in range(0, 16, 4))

    @classmethod
    def make(cls, tag: str, number: int, ip_host: int) -> Canaries:
        """Canaries named by ``tag`` (letters and digits): an e-mail, a user id ``u-<tag>-<number>``,
        a Luhn-valid card, a documentation-range IP (203.0.113.``ip_host``), an API key, a JWT
        whose payload holds the user id and the e-mail."""
        email = f"canary.{tag}@canary-mail.test"
        uid = f"u-{tag}-{number}"
        body = f"4539{number:06d}{ip_host:05d}"[:15]
        payload = _b64(json.dumps({"sub": uid, "email": email}).encode())
        jwt = f"{_JWT_HEADER}.{payload}.{_b64(f'signature-{tag}'.encode())}"
        return cls(
            email=email,
            uid=uid,
            card_digits=body + luhn_check_digit(body),
            ip=f"203.0.113.{ip_host}",
            api_key=f"sk_live_{tag}c4n4ryK3y0123456789abcd",
            jwt_payload=payload,
            jwt=jwt,
        )

    def generator_attributes(self) -> dict[str, str]:
        """What the generator plants in every trace's root span (attribute key → value)."""
        return {
            "user.email": self.email,
            "user.id": self.uid,
            "payment.card.number": self.card,
            "client.address": self.ip,
            "app.debug": f"login {self.email} with {self.jwt} key {self.api_key}",
        }

    def raw(self) -> dict[str, str]:
        """What to search every sink for, by kind."""
        return {
            "email": self.email,
            "user id": self.uid,
            "card": self.card,
            "card digits": self.card_digits,
            "ip": self.ip,
            "jwt": self.jwt,
            "jwt payload": self.jwt_payload,
            "api key": self.api_key,
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


CHAOS = Canaries.make("chaosz9", 55170, 91)
RAW = CHAOS.raw()

# what the generator plants in every trace's root span (attribute key → value)
GENERATOR_CANARIES = CHAOS.generator_attributes()


def text(rng: random.Random, c: Canaries = CHAOS) -> str:
    """Free text holding every canary."""
    return f"user {c.email} id {c.uid} card {c.card} from {c.ip} auth {c.jwt} key {c.api_key} #{rng.randrange(10**6)}"


def planted_batch(rng: random.Random, trace_id: bytes, c: Canaries = CHAOS) -> dict:
    """One error trace with canaries everywhere: attribute values and keys, span name, event name
    and attributes, link attributes, resource attributes, status message, tracestate, scope."""
    t = 1_700_000_000 * 10**9
    root = rng.randbytes(8)
    span = {
        "span_id": root,
        "parent_span_id": None,
        "name": f"GET /users/{c.uid}/cards/{c.card_digits} {c.email}",
        "kind": "SERVER",
        "start_time_unix_nano": t,
        "end_time_unix_nano": t + 5_000_000,
        "status_code": "ERROR",
        "status_message": text(rng, c),
        "trace_state": f"shop=u:{c.uid},mail={c.email.replace('@', '-at-')}",
        "attributes": {"note": text(rng, c), c.email: "key is an email", f"user.{c.uid}": True, "enduser.id": c.uid},
        "events": [
            {"time_unix_nano": t + 1, "name": f"charge {c.card} for {c.email}", "attributes": {"raw": text(rng, c)}}
        ],
        "links": [
            {
                "trace_id": rng.randbytes(16),
                "span_id": rng.randbytes(8),
                "trace_state": "",
                "attributes": {"from": text(rng, c)},
            }
        ],
    }
    return {
        "trace_id": trace_id,
        "service": "canary-svc",
        "spans": [span],
        "resource": {"service.name": "canary-svc", "owner.email": c.email, "host.ip": c.ip, "deploy.token": c.api_key},
        "scope_name": f"scope-{c.email}",
        # OTLP only (the Avro SpanBatch has no such fields; its encoder ignores them)
        "otlp.scope_version": f"1.0 built by {c.email}",
        "otlp.scope_attributes": {"owner": c.email, c.ip: "host", "built.for": f"user {c.uid}"},
    }


def hits(blob: bytes, raw: dict[str, str] = RAW) -> list[str]:
    """The canary kinds (of ``raw``, default the chaos suite's) found in ``blob``."""
    return [what for what, value in raw.items() if value.encode() in blob]


def locate(record, path: str = "") -> set[str]:
    """Field paths of a decoded record (dicts, lists, strings, bytes) that hold a raw canary,
    map keys included, as "<path>: <canary kinds>"."""
    out: set[str] = set()
    if isinstance(record, dict):
        for k, v in record.items():
            if isinstance(k, str) and hits(k.encode()):
                out.add(f"{path}{{key}}: {', '.join(hits(k.encode()))}")
            out |= locate(v, f"{path}.{k}")
    elif isinstance(record, list):
        for v in record:
            out |= locate(v, f"{path}[]")
    elif isinstance(record, (str, bytes)):
        found = hits(record.encode() if isinstance(record, str) else record)
        if found:
            out.add(f"{path}: {', '.join(found)}")
    return out
