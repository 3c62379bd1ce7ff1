"""The PII audit record (``pii_audit.v1``) encoded without fastavro's per-call machinery.

One record is written per kept trace while privacy is on (``Job._pii_audit``). Through
``fastavro.schemaless_writer`` it was most of the audit's cost — its per-call set-up for ~50 bytes,
as for the decision record (``pipeline.codecs.avro_decision``; both build on ``avro_memo``) —
about a tenth of the kept path's CPU on the peer benchmark. Here the part kept traces share (the
counts map and the key id: one of a few per workload) is encoded once per distinct value and
memoized, the rest are a few bytes. Byte-identical to ``pipeline.privacy.audit_record``
(fastavro) by test (``tests/unit/test_audit_record.py``, hypothesis); anything outside the
checked types and ranges is handed to it, so its bytes and errors stay fastavro's.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.codecs.avro_memo import FALSE, INT_MAX, INT_MIN, LONG_MAX, LONG_MIN, TRUE, MemoEncoder, varint
from pipeline.privacy import audit_record

_EMPTY_MAP = b"\x00"


class AuditEncoder(MemoEncoder):
    """Encodes PII audit records. Its memo: (counts, key id) → their bytes."""

    __slots__ = ()

    def encode(
        self,
        trace_id: bytes,
        counts: Mapping[str, int],
        key_id: str,
        now_ns: int,
        late: bool = False,
        span_count: int = 0,
    ) -> bytes:
        """``audit_record(trace_id, counts, key_id, now_ns, late, span_count)``."""
        if not (
            type(trace_id) is bytes
            and len(trace_id) == 16
            and type(late) is bool
            and type(span_count) is int
            and INT_MIN <= span_count <= INT_MAX
            and type(now_ns) is int
            and LONG_MIN <= now_ns <= LONG_MAX
        ):
            return audit_record(trace_id, counts, key_id, now_ns, late, span_count)
        items = tuple(counts.items())
        key = (items, key_id)
        tail = self._memo.get(key)
        if tail is None:
            tail = _encode_tail(items, key_id)
            if tail is None:  # outside the checked types and ranges: fastavro writes (or refuses) it
                return audit_record(trace_id, counts, key_id, now_ns, late, span_count)
            self._remember(key, tail)
        last = self._last_at
        at = last[1] if now_ns == last[0] else self._at(now_ns)
        return b"".join((trace_id, TRUE if late else FALSE, varint(span_count), tail, at))


def _encode_tail(items: tuple, key_id: str) -> bytes | None:
    """The counts map (one block, then the empty block that ends it) and the key id; None outside
    the checked types (str keys, 64-bit int values, a str key id without lone surrogates)."""
    if type(key_id) is not str:
        return None
    parts = [varint(len(items))] if items else []
    try:
        for name, n in items:
            if type(name) is not str or type(n) is not int or not LONG_MIN <= n <= LONG_MAX:
                return None
            data = name.encode()
            parts += (varint(len(data)), data, varint(n))
        data = key_id.encode()
    except UnicodeEncodeError:  # a lone surrogate: fastavro's error
        return None
    parts += (_EMPTY_MAP, varint(len(data)), data)
    return b"".join(parts)
