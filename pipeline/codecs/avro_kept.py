"""Kept traces from Avro input written as Avro: each ``KeptTrace`` span encoded piece by piece from
its message's own fields, every piece protected once per distinct input.

The reference path (``AvroCodec.kept_batches`` → ``Protector.protect_span``/``protect_batch`` →
fastavro's encode of the whole ``KeptTrace``) decodes every kept span's ``SpanDetail`` into dicts,
runs the protector over every value and encodes every value again: ~28 % of the job core on
``make bench``'s traffic, for ~12 % of its spans. Here the same bytes come out (``tests/unit/
test_avro_kept.py`` holds the two to byte equality, audit counts included) at a fraction of the
cost:

- A ``KeptTrace`` ``Span`` is the ingest ``Span``'s header fields, then the ``SpanDetail``'s fields
  with ``trace_state`` between its ``status_message`` and ``attributes`` (``schemas/``). The header
  comes from the decoded handle and is encoded here; the detail is walked here (``_Reader``: its
  fields, and each map entry's own bytes), not decoded by fastavro.
- Each attribute (key, value and its type — one map entry's bytes), each name, status message,
  event name and trace state is put through the protector **itself** once per distinct input and
  the answer — the encoded output and the audit counts — is remembered by that exact input (a SQL
  statement together with its map's ``db.system``): a value seen before costs one dict lookup. An
  attribute the protector leaves as it is (``Protector.leaves_attribute``, the test behind
  ``attribute_unchanged``: same key, same value of the same type, nothing counted) is written as it
  was encoded; any other is written as the protector returned it. No byte pattern decides anything.
- Output maps are built with the reference path's dict semantics (a protected key equal to another
  keeps the first one's place and the last one's value; ``sampling.*`` annotations update in place).
  A map whose input repeats a key, a detail or resource that does not decode here, or a value the
  encoder has no branch for sends the whole message the reference way (which reports it).
- Resources with their service and scope names repeat per producer instance: protected and encoded
  once per distinct input bytes, memoized with their counts.

Every value is re-encoded canonically (what fastavro writes for the decoded value), so a producer's
non-minimal varint or split map block does not reach the output either. Memos are bounded in count
and entry size (cleared when full) and belong to one protector."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from operators.tracestate import with_threshold
from pipeline.codecs.protowire import varint as _varint  # the same base-128 varint (Avro zig-zags first)

AVRO_WIRE = "avro.wire"  # a wire batch's key: (SpanBatch bytes before its spans, after them)
_MEMO_MAX_BYTES = 512  # entries of at most this many input bytes are remembered
_ENVELOPE_MEMO_BYTES, _ENVELOPE_MEMO_SIZE = 8192, 1024
_SAME = object()  # AvroKeptWriter.batches: the protector in use
_DOUBLE = struct.Struct("<d")
_SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS_CODES = ("UNSET", "OK", "ERROR")
_SYSTEM_KEYS = ("db.system", "db.system.name")  # what Protector's sql rule reads of the map
_EMPTY = b"\x00"  # an empty string, map or array; a null union branch
_NO_EVENTS_NOR_LINKS = b"\x00\x00"


class AvroSpan(NamedTuple):
    """A kept span as its encoded ``KeptTrace`` ``Span`` record, and what ``follow_links`` reads."""

    data: bytes
    link_trace_ids: tuple[bytes, ...] = ()


class Fallback(Exception):
    """This message goes the reference way (it decides and reports what happens to it)."""


# ------------------------------------------------------------------ encoding (as fastavro writes)
_SMALL = [bytes(((n << 1) ^ (n >> 63),)) if -64 <= n < 64 else b"" for n in range(-64, 64)]


def long(n: int) -> bytes:
    """An Avro ``long``/``int``: zig-zag varint, minimal."""
    if -64 <= n < 64:
        return _SMALL[n + 64]
    if not -(1 << 63) <= n < (1 << 63):
        raise Fallback("long out of range")
    z = (n << 1) ^ (n >> 63)
    high = z >> 28
    if high:  # times (9 bytes): the low 28 bits, then the rest — shared by times close together
        tail = _HIGH.get(high)
        if tail is None:
            tail = _varint(high)
            if len(_HIGH) >= 4096:
                _HIGH.clear()
            _HIGH[high] = tail
        return bytes((z & 0x7F | 0x80, z >> 7 & 0x7F | 0x80, z >> 14 & 0x7F | 0x80, z >> 21 & 0x7F | 0x80)) + tail
    return _varint(z)


_HIGH: dict[int, bytes] = {}  # varints of the high bits of recent times


def string(s: str) -> bytes:
    b = s.encode()
    return long(len(b)) + b


_KINDS = {s: long(i) for i, s in enumerate(_SPAN_KINDS)}
_STATUSES = {s: long(i) for i, s in enumerate(_STATUS_CODES)}
_TRUE, _FALSE = b"\x01", b"\x00"


def value(v: Any) -> bytes:
    """An attribute value: the union ``["null", "boolean", "long", "double", "string", "bytes",
    {"type": "array", "items": [the scalars]}]``, branch chosen as fastavro chooses it (the first
    that takes the value). Raises ``Fallback`` for a value no branch takes."""
    if isinstance(v, str):
        return b"\x08" + string(v)
    return _scalar(v, True)


def _scalar(v: Any, array_ok: bool) -> bytes:
    if v is None:
        return b"\x00"
    if v is True:
        return b"\x02\x01"
    if v is False:
        return b"\x02\x00"
    t = type(v)
    if t is int:
        if -(1 << 63) <= v < (1 << 63):
            return b"\x04" + long(v)
        raise Fallback("int out of range")  # fastavro would pick the double branch: not mirrored
    if t is float:
        return b"\x06" + _DOUBLE.pack(v)
    if t is str:
        return b"\x08" + string(v)
    if t is bytes or t is bytearray:
        return b"\x0a" + long(len(v)) + bytes(v)
    if t is list and array_ok:
        if not v:
            return b"\x0c\x00"
        return b"\x0c" + long(len(v)) + b"".join([_scalar(x, False) for x in v]) + b"\x00"
    raise Fallback(f"no union branch for {t.__name__}")


def entry(key: str, v: Any) -> bytes:
    """One map entry (key, value)."""
    return string(key) + value(v)


def map_of(entries: dict[str, bytes]) -> bytes:
    """A map from its encoded entries (one block, as fastavro writes it)."""
    if not entries:
        return _EMPTY
    return long(len(entries)) + b"".join(entries.values()) + _EMPTY


# ------------------------------------------------------------------ reading a SpanDetail
class _Reader:
    """The Avro reads of a ``SpanDetail`` / ``Resource``, strict where fastavro could read a value
    differently (booleans other than 0/1, varints past 64 bits): such input raises ``Fallback``."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def long(self) -> int:
        buf, pos = self.buf, self.pos
        b = buf[pos]
        pos += 1
        if b < 0x80:
            self.pos = pos
            return (b >> 1) ^ -(b & 1)
        n, shift = b & 0x7F, 7
        while b & 0x80:
            if shift > 63:
                raise Fallback("varint longer than 10 bytes")
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
        if n >> 64:
            raise Fallback("varint past 64 bits")
        self.pos = pos
        return (n >> 1) ^ -(n & 1)

    def raw(self, n: int) -> bytes:
        if n < 0:
            raise Fallback("negative length")
        pos = self.pos
        end = pos + n
        if end > len(self.buf):
            raise Fallback("truncated")
        self.pos = end
        return self.buf[pos:end]

    def string(self) -> str:
        return self.raw(self.long()).decode()  # strict UTF-8, as fastavro

    def block(self) -> int:
        """The item count of an array or map block (0: the end); a negative count's byte size is skipped."""
        n = self.long()
        if n < 0:
            self.long()
            n = -n
        return n

    def scalar(self, index: int) -> Any:
        if index == 4:
            return self.string()
        if index == 2:
            return self.long()
        if index == 0:
            return None
        if index == 3:
            return _DOUBLE.unpack(self.raw(8))[0]
        if index == 1:
            b = self.raw(1)
            if b == _TRUE:
                return True
            if b == _FALSE:
                return False
            raise Fallback("boolean byte neither 0 nor 1")
        if index == 5:
            return self.raw(self.long())
        raise Fallback("union index out of range")

    def attributes(self) -> list[bytes]:
        """A map's entries in order, each as its own bytes (key, union index, value): found, not
        decoded — ``decode_entry`` decodes one whose answer is not remembered."""
        entries, self.pos = _map_entries(self.buf, self.pos)
        return entries

    def array_of_scalars(self) -> list:
        items = []
        m = self.block()
        while m:
            for _ in range(m):
                i = self.long()
                if i == 6:
                    raise Fallback("nested array")
                items.append(self.scalar(i))
            m = self.block()
        return items

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise Fallback("trailing bytes")  # as avro.decode: another schema wrote this


def _long_at(buf: bytes, pos: int) -> tuple[int, int]:
    """The long at ``pos`` and the position after it (``_Reader.long``'s checks)."""
    r = _Reader(buf)
    r.pos = pos
    n = r.long()
    return n, r.pos


def _map_entries(buf: bytes, pos: int) -> tuple[list[bytes], int]:
    """The entries of the attribute map at ``pos`` as byte strings, and the position after the map.
    Only lengths are read (the common one-byte varints inline); the caller checks the end."""
    entries = []
    while True:
        b = buf[pos]
        if b < 0x80:
            n = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            n, pos = _long_at(buf, pos)
        if n == 0:
            return entries, pos
        if n < 0:  # a block with its byte size
            _, pos = _long_at(buf, pos)
            n = -n
        for _ in range(n):
            start = pos
            b = buf[pos]  # the key's length
            if b < 0x80 and not b & 1:
                pos += 1 + (b >> 1)
            else:
                n_, pos = _long_at(buf, pos)
                if n_ < 0:
                    raise Fallback("negative length")
                pos += n_
            u = buf[pos]  # the union index
            pos += 1
            if u == 8 or u == 10:  # string, bytes
                b = buf[pos]
                if b < 0x80 and not b & 1:
                    pos += 1 + (b >> 1)
                else:
                    n_, pos = _long_at(buf, pos)
                    if n_ < 0:
                        raise Fallback("negative length")
                    pos += n_
            elif u == 4:  # long
                _, pos = _long_at(buf, pos)
            elif u == 6:  # double
                pos += 8
            elif u == 2:  # boolean
                pos += 1
            elif u == 12:  # array
                r = _Reader(buf)
                r.pos = pos
                r.array_of_scalars()
                pos = r.pos
            elif u != 0:
                raise Fallback("union index out of range")
            if pos > len(buf):
                raise Fallback("truncated")
            entries.append(buf[start:pos])


def decode_entry(raw: bytes) -> tuple[str, Any]:
    """One map entry's key and value, strictly (``Fallback`` where fastavro might read otherwise)."""
    r = _Reader(raw)
    try:
        key = r.string()
        index = r.long()
        v = r.array_of_scalars() if index == 6 else r.scalar(index)
    except (IndexError, UnicodeDecodeError) as exc:
        raise Fallback(type(exc).__name__) from None
    r.end()
    return key, v


class _Detail(NamedTuple):
    status_message: str
    attributes: list
    events: list  # (time, name, attributes)
    links: list  # (trace_id, span_id, trace_state, attributes)


_NO_DETAIL = _Detail("", [], [], [])


def read_detail(detail: bytes) -> _Detail:
    """A ``SpanDetail``'s fields; ``Fallback`` for one that does not decode here."""
    if not detail:
        return _NO_DETAIL
    try:
        return _read_detail(_Reader(detail))
    except (IndexError, UnicodeDecodeError) as exc:
        raise Fallback(type(exc).__name__) from None


def _read_detail(r: _Reader) -> _Detail:
    message = r.string()
    attributes = r.attributes()
    events = []
    n = r.block()
    while n:
        for _ in range(n):
            events.append((r.long(), r.string(), r.attributes()))
        n = r.block()
    links = []
    n = r.block()
    while n:
        for _ in range(n):
            links.append((r.raw(16), r.raw(8), r.string(), r.attributes()))
        n = r.block()
    r.end()
    return _Detail(message, attributes, events, links)


def read_resource(resource: bytes) -> list:
    """An encoded ``Resource``'s attribute entries; ``Fallback`` for one that does not decode here."""
    if not resource:
        return []
    r = _Reader(resource)
    try:
        attributes = r.attributes()
    except (IndexError, UnicodeDecodeError) as exc:
        raise Fallback(type(exc).__name__) from None
    r.end()
    return attributes


# ------------------------------------------------------------------ the writer
class AvroKeptWriter:
    """Wire batches of kept Avro traces for ``AvroCodec.encode_kept``. One per job; its memos (cleared
    when full, entries of at most ``_MEMO_MAX_BYTES`` input bytes) hold the protector's answers and
    belong to that protector."""

    def __init__(self, protector: Any = None, memo_size: int = 16_384):
        self.memo_size = memo_size
        self.use(protector)

    def use(self, protector: Any) -> None:
        """Protect with ``protector`` (None: privacy off); the memos start over: answers are its."""
        self.protector = protector
        self._attribute: dict[Any, tuple] = {}  # entry bytes (, its map's db.system) → answer
        self._name: dict[str, tuple[bytes, tuple]] = {}  # → (encoded output, counts)
        self._text: dict[str, tuple[bytes, tuple]] = {}
        self._tracestate: dict[str, tuple[str, tuple]] = {}
        self._envelope: dict[tuple, tuple[bytes, bytes, tuple]] = {}

    def batches(
        self,
        handle: dict,
        sampling_attrs: dict,
        threshold: int | None,
        pii_counts: dict[str, int],
        protector: Any = _SAME,
    ) -> list[dict]:
        """The one wire batch of a kept message (``handle``: the decoded ``SpanBatch``, details and
        resource still encoded), protected and annotated as the reference path does it. Raises
        ``Fallback`` (nothing counted, the handle untouched) for a message to send the reference way."""
        if protector is not _SAME and protector is not self.protector:
            self.use(protector)
        counts: dict[str, int] = {}
        sampling = {key: entry(key, v) for key, v in sampling_attrs.items()}
        trace_id = handle["trace_id"]
        spans = [self._span(span, sampling, threshold, counts) for span in handle["spans"]]
        head, tail, hits = self._envelope_of(handle)
        _add(counts, hits)
        for name, n in counts.items():
            pii_counts[name] = pii_counts.get(name, 0) + n
        return [{"trace_id": trace_id, "spans": spans, AVRO_WIRE: (head, tail)}]

    # ------------------------------------------------------------------ spans
    def _span(self, span: dict, sampling: dict[str, bytes], th: int | None, counts: dict) -> AvroSpan:
        detail = read_detail(span["detail"])
        protector = self.protector
        parent = span["parent_span_id"]
        name, hits = self._known(self._name, span["name"], protector.protect_name if protector else None)
        _add(counts, hits)
        message = detail.status_message
        if message and protector is not None:
            message_enc, hits = self._known(self._text, message, protector.scan_text)
            _add(counts, hits)
        else:
            message_enc = string(message)
        ts = self._tracestate_of(span["trace_state"], counts)
        if th is not None:
            ts = with_threshold(ts, th)
        attributes = self._attributes(detail.attributes, counts)
        if attributes is None:
            attributes = {}
        attributes.update(sampling)
        parts = [
            span["span_id"],
            _EMPTY if parent is None else b"\x02" + parent,
            name,
            _KINDS[span["kind"]],
            long(span["start_time_unix_nano"]),
            long(span["end_time_unix_nano"]),
            _STATUSES[span["status_code"]],
            message_enc,
            string(ts),
            map_of(attributes),
        ]
        if not detail.events and not detail.links:
            parts.append(_NO_EVENTS_NOR_LINKS)
            return AvroSpan(b"".join(parts))
        parts.append(self._events(detail.events, counts))
        parts.append(self._links(detail.links, counts))
        return AvroSpan(b"".join(parts), tuple(ln[0] for ln in detail.links))

    def _events(self, events: list, counts: dict) -> bytes:
        if not events:
            return _EMPTY
        protector = self.protector
        out = [long(len(events))]
        for time, name, attributes in events:
            if protector is not None:
                name_enc, hits = self._known(self._text, name, protector.scan_text)
                _add(counts, hits)
            else:
                name_enc = string(name)
            out += [long(time), name_enc, map_of(self._attributes(attributes, counts) or {})]
        out.append(_EMPTY)
        return b"".join(out)

    def _links(self, links: list, counts: dict) -> bytes:
        if not links:
            return _EMPTY
        out = [long(len(links))]
        for trace_id, span_id, ts, attributes in links:
            out += [trace_id, span_id, string(self._tracestate_of(ts, counts))]
            out.append(map_of(self._attributes(attributes, counts) or {}))
        out.append(_EMPTY)
        return b"".join(out)

    def _tracestate_of(self, ts: str, counts: dict) -> str:
        protector = self.protector
        if not ts or protector is None:
            return ts
        hit = self._tracestate.get(ts)
        if hit is None:
            local: dict[str, int] = {}
            hit = (protector.protect_tracestate(ts, local), tuple(local.items()))
            self._remember(self._tracestate, ts, hit, len(ts))
        _add(counts, hit[1])
        return hit[0]

    def _known(self, memo: dict, text: str, protect: Any) -> tuple[bytes, tuple]:
        """(encoded output, counts) of a text protected by ``protect`` (None: as it is)."""
        hit = memo.get(text)
        if hit is None:
            if protect is None:
                return string(text), ()
            local: dict[str, int] = {}
            hit = (string(protect(text, local)), tuple(local.items()))
            self._remember(memo, text, hit, len(text))
        return hit

    # ------------------------------------------------------------------ attribute maps
    def _attributes(self, entries: list[bytes], counts: dict) -> dict[str, bytes] | None:
        """The protected map as {output key: encoded entry}, in the reference path's order (None:
        an empty input map)."""
        if not entries:
            return None
        memo = self._attribute
        pending: list | None = None  # indexes of answers that read the map's db.system
        answers: list = []
        for raw in entries:
            hit = memo.get(raw)
            if hit is None:
                hit = self._answer(raw, raw, None)
            if hit[1] is _IN_CONTEXT:
                pending = [*(pending or ()), len(answers)]
            answers.append(hit)
        if len({a[0] for a in answers}) != len(answers):
            raise Fallback("a repeated key")  # the reference path keeps one value, its audit one count
        if pending:
            found = [(a[0], raw) for a, raw in zip(answers, entries) if a[0] in _SYSTEM_KEYS]
            context = {key: decode_entry(raw)[1] for key, raw in found}
            system = tuple([raw for _, raw in found])  # exact input, hashable
            for i in pending:
                raw = entries[i]
                hit = memo.get((raw, system))
                if hit is None:
                    hit = self._answer(raw, (raw, system), context)
                answers[i] = hit
        out: dict[str, bytes] = {}
        for _, out_key, data, hits in answers:
            if hits:
                _add(counts, hits)
            if out_key is not None:
                out[out_key] = data
        return out

    def _answer(self, raw: bytes, memo_key: Any, context: dict | None) -> tuple:
        """``protected_entry``, remembered by ``memo_key``."""
        hit = self.protected_entry(raw, context)
        self._remember(self._attribute, memo_key, hit, len(raw))
        return hit

    def protected_entry(self, raw: bytes, context: dict | None) -> tuple:
        """The protector's answer for one attribute (a map entry's bytes): (input key, output key or
        None, encoded output entry, counts); output key ``_IN_CONTEXT`` when asked without
        ``context`` about a key whose protection reads it. Raises ``Fallback`` for an entry that
        does not decode here."""
        key, v = decode_entry(raw)
        protector = self.protector
        hit: tuple
        if protector is None:
            hit = (key, key, entry(key, v), ())
        elif context is None and protector.reads_context(key):
            hit = (key, _IN_CONTEXT, b"", ())
        else:
            out, local = protector.protect_attribute(key, v, context)
            if protector.leaves_attribute(key, v, out, local):
                hit = (key, key, entry(key, v), ())
            elif out:
                ((out_key, new),) = out.items()
                hit = (key, out_key, entry(out_key, new), tuple(local.items()))
            else:
                hit = (key, None, b"", tuple(local.items()))
        return hit

    def _remember(self, memo: dict, key: Any, answer: Any, size: int) -> None:
        if size <= _MEMO_MAX_BYTES:
            if len(memo) >= self.memo_size:
                memo.clear()
            memo[key] = answer

    # ------------------------------------------------------------------ service, resource, scope
    def _envelope_of(self, handle: dict) -> tuple[bytes, bytes, tuple]:
        """(trace ID + service, resource + scope name) of the batch, protected the reference way
        (``protect_batch``); memoized by their input with the counts."""
        service, resource, scope = handle["service"], handle["resource"], handle["scope_name"]
        key = (service, resource, scope)
        hit = self._envelope.get(key)
        if hit is None:
            protector = self.protector
            local: dict[str, int] = {}
            entries = read_resource(resource)
            if protector is not None:
                out = self._attributes(entries, local) or {}
                service_out = protector.scan_text(service, local) if service else service
                scope_out = protector.scan_text(scope, local) if scope else scope
            else:
                out = self._attributes(entries, local) or {}
                service_out, scope_out = service, scope
            hit = (string(service_out), map_of(out) + string(scope_out), tuple(local.items()))
            if len(resource) + len(service) + len(scope) <= _ENVELOPE_MEMO_BYTES:
                if len(self._envelope) >= _ENVELOPE_MEMO_SIZE:
                    self._envelope.clear()
                self._envelope[key] = hit
        service_enc, tail, hits = hit
        return handle["trace_id"] + service_enc, tail, hits


_IN_CONTEXT = object()  # an attribute answer: ask again with the map's db.system


def _add(counts: dict[str, int], hits: tuple) -> None:
    for name, n in hits:
        counts[name] = counts.get(name, 0) + n


# ------------------------------------------------------------------ the KeptTrace record
def kept_trace(
    trace_id: bytes,
    policy: str,
    reason: str,
    adjusted_count: float,
    decided_at_ns: int,
    late: bool,
    span_count: int,
    batches: list[bytes],
    part: int,
    parts: int,
) -> bytes:
    """A ``KeptTrace`` from its encoded ``SpanBatch`` items, as fastavro writes the record."""
    items = long(len(batches)) + b"".join(batches) + _EMPTY if batches else _EMPTY
    return b"".join(
        (
            trace_id,
            string(policy),
            string(reason),
            _DOUBLE.pack(adjusted_count),
            long(decided_at_ns),
            _TRUE if late else _FALSE,
            long(span_count),
            items,
            long(part),
            long(parts),
        )
    )


def batch_bytes(batch: dict) -> bytes:
    """A wire batch as its encoded ``SpanBatch``."""
    head, tail = batch[AVRO_WIRE]
    spans = batch["spans"]
    if not spans:
        return head + _EMPTY + tail
    return head + long(len(spans)) + b"".join([s.data for s in spans]) + _EMPTY + tail
