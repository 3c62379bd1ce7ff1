"""Protection of a W3C ``tracestate`` (span and link trace states).

A tracestate is ``key=value`` members separated by commas. OpenTelemetry's own member ``ot``
holds ``th`` and ``rv`` (OTEP 235: hex digits the sampler reads and writes); those stay as they
are. Every other member's value is a vendor's opaque free text — a producer can put anything
there (``shop=u:u-58590``) and no detector can know which part names a person — so each vendor
value is tokenized whole: deterministic (the same state gives the same token, still valid W3C
value text) and unreadable without the key. Members that are not W3C list members (no ``=``, a
key outside the W3C key grammar, which could then be any text) and unknown ``ot`` sub-keys are
dropped. Every change is counted ``rule:trace-state``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from operators.privacy.tokenizer import TOKEN_RE

RULE = "rule:trace-state"
# W3C trace-context: simple-key / multi-tenant-key (tenant@system)
_KEY = re.compile(r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}")
# OTEP 235: th = 1-14 hex digits, rv = 14 hex digits
_OT_KEEP = {"th": re.compile(r"[0-9a-f]{1,14}"), "rv": re.compile(r"[0-9a-f]{14}")}


def protect_tracestate(tracestate: str, token: Callable[[str], str], counts: dict[str, int]) -> str:
    """``tracestate`` with ``ot``'s th/rv kept, vendor values tokenized by ``token``, the rest dropped."""
    out: list[str] = []
    changed = 0
    for part in tracestate.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key):
            changed += 1
            continue
        if key == "ot":
            kept = []
            for item in value.split(";"):
                k, colon, v = item.partition(":")
                rx = _OT_KEEP.get(k)
                if colon and rx is not None and rx.fullmatch(v):
                    kept.append(item)
                else:
                    changed += 1
            if kept:
                out.append("ot=" + ";".join(kept))
            continue
        if TOKEN_RE.fullmatch(value):  # protected already (protection run twice): hex, nothing to hide
            out.append(f"{key}={value}")
            continue
        out.append(f"{key}={token(value)}")
        changed += 1
    if changed:
        counts[RULE] = counts.get(RULE, 0) + changed
    return ",".join(out)
