"""What the hand-written Avro encoders of the job's per-trace records share
(``pipeline.codecs.avro_decision``, ``pipeline.codecs.avro_audit``): zig-zag varints, the ranges
their fast paths check, and ``MemoEncoder`` — the bounded memo of the fields many records share
and the varint of the last clock reading written (one ``decide_due`` decides most traces at the
same reading)."""

from __future__ import annotations

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
TRUE, FALSE = b"\x01", b"\x00"
MEMO_LIMIT = 1024  # distinct shared-field encodings an encoder keeps
_SMALL = [bytes([n]) for n in range(0x80)]  # varints of one byte


def varint(n: int) -> bytes:
    """Avro's zig-zag varint of a long already known to fit 64 bits."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class MemoEncoder:
    """The state of a memoizing record encoder: ``_memo`` (shared-field key → their bytes, cleared
    when ``MEMO_LIMIT`` is reached) and ``_last_at`` (the last time written and its varint: one
    attribute holding both, so a reader never pairs one time with another's bytes). Its memo is a
    pure function's cache, so one encoder serves every job of the process.

    The hot path reads both itself and calls out only on a miss (``_remember``, ``_at``): a method
    call per record would cost about as much as the lookup saves."""

    __slots__ = ("_memo", "_last_at")

    def __init__(self) -> None:
        self._memo: dict[tuple, bytes | tuple[bytes, ...]] = {}
        self._last_at: tuple[int, bytes] = (0, b"\x00")

    def _remember(self, key: tuple, encoded):  # noqa: ANN001, ANN202 - bytes or a tuple of them
        memo = self._memo
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[key] = encoded
        return encoded

    def _at(self, ns: int) -> bytes:
        """The varint of a time other than the last one written, remembered as the last."""
        at = varint(ns)
        self._last_at = (ns, at)
        return at
