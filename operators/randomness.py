"""Consistent probability sampling from the trace ID (W3C Trace Context level 2, OTEP 235).

The 56 least-significant bits of a W3C trace ID are random. A trace is kept at probability p
when its randomness R is at or above the rejection threshold T = (1 − p) · 2^56. Because T falls as
p rises, a trace kept at 1 % is also kept at 10 %, on every worker and on every replay.
"""

from __future__ import annotations

MAX_RANDOMNESS = 1 << 56


def randomness(trace_id: bytes) -> int:
    """R: the low 56 bits (last 7 bytes) of the 16-byte trace ID."""
    return int.from_bytes(trace_id[9:16], "big")


def threshold(probability: float) -> int:
    """T for keep probability p in (0, 1]; p = 1 gives 0 (keep all)."""
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be in (0, 1], got {probability!r}")
    return round((1.0 - probability) * MAX_RANDOMNESS)


def threshold_hex(t: int) -> str:
    """T as the OTEP 235 ``th`` value: 14 hex digits with trailing zeros removed ("0" for keep-all)."""
    return format(t, "014x").rstrip("0") or "0"


def is_kept(trace_id: bytes, t: int) -> bool:
    return randomness(trace_id) >= t
