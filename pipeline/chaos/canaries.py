"""PII canaries: raw values planted in every place a producer can put text, and the scan for
them in every sink the job writes — output topics (keys and values), worker logs, /metrics."""

from __future__ import annotations

import base64
import json
import random

from operators.privacy.luhn import luhn_check_digit

EMAIL = "canary.chaos.z9@canary-mail.test"
UID = "u-chaoscanary-55170"
_CARD_BODY = "453914880343646"
CARD_DIGITS = _CARD_BODY + luhn_check_digit(_CARD_BODY)
CARD = " ".join(CARD_DIGITS[i : i + 4] for i in range(0, 16, 4))
IP = "203.0.113.91"
API_KEY = "sk_live_CHAOSc4n4ryK3y0123456789abcd"
_JWT_PAYLOAD = base64.urlsafe_b64encode(json.dumps({"sub": UID, "email": EMAIL}).encode()).rstrip(b"=").decode()
JWT = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{_JWT_PAYLOAD}.c2lnbmF0dXJlLWNoYW9z"

RAW = {
    "email": EMAIL,
    "user id": UID,
    "card": CARD,
    "card digits": CARD_DIGITS,
    "ip": IP,
    "jwt": JWT,
    "jwt payload": _JWT_PAYLOAD,
    "api key": API_KEY,
}

# what the generator plants in every trace's root span (attribute key → value)
GENERATOR_CANARIES = {
    "user.email": EMAIL,
    "user.id": UID,
    "payment.card.number": CARD,
    "client.address": IP,
    "app.debug": f"login {EMAIL} with {JWT} key {API_KEY}",
}


def text(rng: random.Random) -> str:
    """Free text holding every canary."""
    return f"user {EMAIL} id {UID} card {CARD} from {IP} auth {JWT} key {API_KEY} #{rng.randrange(10**6)}"


def planted_batch(rng: random.Random, trace_id: bytes) -> dict:
    """One error trace with canaries everywhere: attribute values and keys, span name, event name
    and attributes, link attributes, resource attributes, status message, tracestate, scope."""
    t = 1_700_000_000 * 10**9
    root = rng.randbytes(8)
    span = {
        "span_id": root,
        "parent_span_id": None,
        "name": f"GET /users/{UID}/cards/{CARD_DIGITS} {EMAIL}",
        "kind": "SERVER",
        "start_time_unix_nano": t,
        "end_time_unix_nano": t + 5_000_000,
        "status_code": "ERROR",
        "status_message": text(rng),
        "trace_state": f"shop=u:{UID},mail={EMAIL.replace('@', '-at-')}",
        "attributes": {"note": text(rng), EMAIL: "key is an email", f"user.{UID}": True, "enduser.id": UID},
        "events": [{"time_unix_nano": t + 1, "name": f"charge {CARD} for {EMAIL}", "attributes": {"raw": text(rng)}}],
        "links": [
            {
                "trace_id": rng.randbytes(16),
                "span_id": rng.randbytes(8),
                "trace_state": "",
                "attributes": {"from": text(rng)},
            }
        ],
    }
    return {
        "trace_id": trace_id,
        "service": "canary-svc",
        "spans": [span],
        "resource": {"service.name": "canary-svc", "owner.email": EMAIL, "host.ip": IP, "deploy.token": API_KEY},
        "scope_name": f"scope-{EMAIL}",
    }


def hits(blob: bytes) -> list[str]:
    return [what for what, raw in RAW.items() if raw.encode() in blob]


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
