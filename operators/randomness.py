"""Consistent probability sampling from the trace ID (W3C Trace Context level 2, OTEP 235).

The 56 least-significant bits of a W3C trace ID are random. A trace is kept at probability p
when its randomness R is at or above the rejection threshold T = (1 − p) · 2^56. Because T falls as
p rises, a trace kept at 1 % is also kept at 10 %, on every worker and on every replay.

R comes from, in order: an explicit ``rv`` in the tracestate's ``ot`` entry (OTEP 235: 14 hex
digits, set by whoever started the trace), else the low 56 bits of the trace ID. A sampler with a
``hash_salt`` uses its own randomness instead, ``salted_randomness(trace_id, salt)`` (56 bits of a
keyed BLAKE2b of the trace ID): still a pure function of the trace, so every worker and replay
agrees, but independent of R, so it does not nest with unsalted samplers (which is the point of a
salt: decorrelating two tiers or two samplers).
"""

from __future__ import annotations

import hashlib

MAX_RANDOMNESS = 1 << 56


def randomness(trace_id: bytes) -> int:
    """R: the low 56 bits (last 7 bytes) of the 16-byte trace ID."""
    return int.from_bytes(trace_id[9:16], "big")


def salted_randomness(trace_id: bytes, salt: str) -> int:
    """56 bits of BLAKE2b(trace_id, key=salt): deterministic per (trace, salt), independent of R."""
    return int.from_bytes(hashlib.blake2b(trace_id, digest_size=7, key=salt.encode()[:64]).digest(), "big")


def threshold(probability: float) -> int:
    """T for keep probability p in (0, 1]; p = 1 gives 0 (keep all)."""
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be in (0, 1], got {probability!r}")
    return round((1.0 - probability) * MAX_RANDOMNESS)


def probability(t: int) -> float:
    """The keep probability a threshold stands for."""
    return (MAX_RANDOMNESS - t) / MAX_RANDOMNESS


def threshold_hex(t: int) -> str:
    """T as the OTEP 235 ``th`` value: 14 hex digits with trailing zeros removed ("0" for keep-all)."""
    return format(t, "014x").rstrip("0") or "0"


def parse_threshold_hex(text: str) -> int | None:
    """The inverse of ``threshold_hex`` (1-14 hex digits, right-padded); None if malformed."""
    # int() alone would also take a sign, "_" and spaces ("-1" would be a negative threshold)
    if not 1 <= len(text) <= 14 or text.strip("0123456789abcdefABCDEF"):
        return None
    return int(text.ljust(14, "0"), 16)


def is_kept(trace_id: bytes, t: int) -> bool:
    return randomness(trace_id) >= t
