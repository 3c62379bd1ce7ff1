"""The decision-log record (``trace_decision.v1``) encoded without fastavro's per-call machinery.

One record is written per decided trace. ``fastavro.schemaless_writer`` with the parsed schema
cost ~8.5 µs per record on a quiet machine (its per-call set-up — named schemas, encoder, options
dict, the record walk — dwarfs the ~60 bytes it writes); this writes the same bytes in ~1–2 µs:
the fields a decision shares with many others (policy, reason, probability, threshold,
dry-run flag, and at the end the trigger) are encoded once per distinct value set and memoized,
the rest are a few varints.
Byte-identical to fastavro by construction *and* by test (``tests/unit/test_decision_record.py``,
hypothesis: every field over its whole domain, checked against ``fastavro.schemaless_writer``);
anything outside the fast path's checked ranges (a trace ID that is not 16 bytes, a long outside
64 bits, an int outside 32 bits, a value of another Python type than the usual one — an int
probability, a bool offset) is handed to fastavro, so its bytes and errors stay
fastavro's too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pipeline.codecs import avro
from pipeline.codecs.avro_memo import FALSE, INT_MAX, INT_MIN, LONG_MAX, LONG_MIN, TRUE, MemoEncoder, varint

_DOUBLE = struct.Struct("<d").pack
_EMPTY_ARRAY = b"\x00"
_NO_CHECKPOINT = b"\x01"  # processed_through = -1, zig-zag encoded


def _string(text: str) -> bytes:
    data = text.encode()
    return varint(len(data)) + data


def _union_long(value: int | None) -> bytes:
    """["null", "long"]: the branch index, then the long."""
    return b"\x00" if value is None else b"\x02" + varint(value)


def _union_bool(value: bool | None) -> bytes:
    """["null", "boolean"]: the branch index, then the boolean."""
    return b"\x00" if value is None else b"\x02" + (TRUE if value else FALSE)


def _all_longs(values: list) -> bool:
    return all(type(v) is int and LONG_MIN <= v <= LONG_MAX for v in values)


class DecisionEncoder(MemoEncoder):
    """Encodes decision-log records. Its memo: (policy, reason, probability, threshold, dry-run,
    trigger) → the bytes of the first five, and apart the trigger's (the last field)."""

    __slots__ = ()

    def encode(
        self,
        trace_id: bytes,
        keep: bool,
        policy: str,
        reason: str,
        probability: float,
        threshold: int | None,
        dry_run_kept: bool | None,
        decided_at_ns: int,
        partition: int,
        offsets: Iterable[int],
        processed_through: int = -1,
        trigger: str = "",
    ) -> bytes:
        """``avro.encode(avro.TRACE_DECISION, {...})`` of these fields (``offsets`` sorted here)."""
        offsets = sorted(offsets) if offsets else []
        if not (
            type(trace_id) is bytes
            and len(trace_id) == 16
            and type(keep) is bool
            and type(decided_at_ns) is int
            and LONG_MIN <= decided_at_ns <= LONG_MAX
            and type(partition) is int
            and INT_MIN <= partition <= INT_MAX
            and type(processed_through) is int
            and LONG_MIN <= processed_through <= LONG_MAX
            and (not offsets or _all_longs(offsets))
            and type(probability) is float
        ):
            return self._fastavro(
                trace_id, keep, policy, reason, probability, threshold, dry_run_kept,
                decided_at_ns, partition, offsets, processed_through, trigger,
            )  # fmt: skip
        packed = _DOUBLE(probability)
        # the packed double in the key: 0.0 == -0.0 (one dict key) but they encode differently;
        # the types too: True == 1 (a threshold) and 1 == True (a dry-run flag) would share a key
        key = (policy, reason, packed, threshold, dry_run_kept, type(threshold), type(dry_run_kept), trigger)
        parts = self._memo.get(key)
        if parts is None:
            parts = self._encode_middle(policy, reason, packed, threshold, dry_run_kept, trigger)
            if parts is None:  # outside the checked types and ranges: fastavro writes (or refuses) it
                return self._fastavro(
                    trace_id, keep, policy, reason, probability, threshold, dry_run_kept,
                    decided_at_ns, partition, offsets, processed_through, trigger,
                )  # fmt: skip
            self._remember(key, parts)
        middle, trigger_bytes = parts
        last = self._last_at
        at = last[1] if decided_at_ns == last[0] else self._at(decided_at_ns)
        if offsets:
            array = varint(len(offsets)) + b"".join([varint(o) for o in offsets]) + _EMPTY_ARRAY
        else:
            array = _EMPTY_ARRAY
        return b"".join(
            (
                trace_id,
                TRUE if keep else FALSE,
                middle,
                at,
                varint(partition),
                array,
                _NO_CHECKPOINT if processed_through == -1 else varint(processed_through),
                trigger_bytes,
            )
        )

    @staticmethod
    def _encode_middle(
        policy: str, reason: str, packed: bytes, threshold: int | None, dry_run_kept: bool | None, trigger: str
    ) -> tuple[bytes, bytes] | None:
        """policy, reason, probability, threshold, dry_run_kept — and apart, the trigger (the last
        field); None outside the checked types."""
        if not (
            type(policy) is str
            and type(reason) is str
            and type(trigger) is str
            and (threshold is None or (type(threshold) is int and LONG_MIN <= threshold <= LONG_MAX))
            and (dry_run_kept is None or type(dry_run_kept) is bool)
        ):
            return None
        try:
            middle = _string(policy) + _string(reason) + packed + _union_long(threshold) + _union_bool(dry_run_kept)
            return middle, _string(trigger)
        except UnicodeEncodeError:  # a lone surrogate: fastavro's error
            return None

    @staticmethod
    def _fastavro(
        trace_id, keep, policy, reason, probability, threshold, dry_run_kept,
        decided_at_ns, partition, offsets, processed_through, trigger,
    ) -> bytes:  # fmt: skip
        return avro.encode(
            avro.TRACE_DECISION,
            {
                "trace_id": trace_id,
                "keep": keep,
                "policy": policy,
                "reason": reason,
                "probability": probability,
                "threshold": threshold,
                "dry_run_kept": dry_run_kept,
                "decided_at_unix_nano": decided_at_ns,
                "input_partition": partition,
                "emitted_offsets": offsets,
                "processed_through": processed_through,
                "trigger": trigger,
            },
        )
