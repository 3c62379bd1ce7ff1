"""The OpenTelemetry entry (``ot``) of a W3C tracestate: read ``rv``, write ``th`` (OTEP 235).

A tracestate is ``key=value`` list members separated by commas; the ``ot`` member's value holds
``sub:value`` pairs separated by semicolons, e.g. ``ot=th:c;rv:1a2b3c4d5e6f70,vendor=x``.
"""

from __future__ import annotations

from operators import randomness as rnd


def _split(tracestate: str) -> list[tuple[str, str]]:
    members = []
    for part in tracestate.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            members.append((key.strip(), value.strip()))
    return members


def ot_fields(tracestate: str) -> dict[str, str]:
    """The ``ot`` member's sub-keys (empty when there is none)."""
    if not tracestate or "ot=" not in tracestate:
        return {}
    for key, value in _split(tracestate):
        if key == "ot":
            out = {}
            for item in value.split(";"):
                k, sep, v = item.partition(":")
                if sep:
                    out[k] = v
            return out
    return {}


def explicit_randomness(tracestate: str) -> int | None:
    """``rv`` (exactly 14 hex digits) of the ``ot`` member, if present and well formed."""
    rv = ot_fields(tracestate).get("rv")
    if rv is None or len(rv) != 14:
        return None
    try:
        return int(rv, 16)
    except ValueError:
        return None


def upstream_threshold(tracestate: str) -> int:
    """The ``th`` an upstream consistent sampler wrote (0 = none, malformed, or keep-all)."""
    th = ot_fields(tracestate).get("th")
    if th is None:
        return 0
    return rnd.parse_threshold_hex(th) or 0


def with_threshold(tracestate: str, t: int) -> str:
    """The tracestate with ``ot=th:`` recording rejection threshold ``t``.

    An upstream threshold (e.g. head sampling) is combined the OTEP 235 way: both samplers used the
    same randomness, so the trace passed both iff R >= max(T_up, T); the larger one is written.
    The ``ot`` member moves to the front (W3C: a modified member is moved to the left)."""
    members = _split(tracestate)
    ot: list[tuple[str, str]] = []
    rest = []
    for key, value in members:
        if key == "ot":
            for item in value.split(";"):
                k, sep, v = item.partition(":")
                if sep:
                    ot.append((k, v))
        else:
            rest.append((key, value))
    upstream = next((rnd.parse_threshold_hex(v) for k, v in ot if k == "th"), None)
    if upstream is not None:
        t = max(t, upstream)
    ot = [("th", rnd.threshold_hex(t))] + [(k, v) for k, v in ot if k != "th"]
    value = ";".join(f"{k}:{v}" for k, v in ot)
    return ",".join([f"ot={value}"] + [f"{k}={v}" for k, v in rest])
