"""Hostile messages, in either wire format, each labelled with what it is.

Every message is built from its own throw-away trace (never a trace of the good traffic), with
services named ``fuzz-*``, so what the job does with it cannot disturb the exactness checks of
the good traffic — only the fuzz figures. A mutated message (truncated, bit-flipped) that still
decodes as a well-formed message of the wire format is not hostile any more: ``still_valid``
says so, checked with the wire format's own codec, and the suite does not demand a dead letter
for it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from operators.span_times import SpanTimeBounds
from pipeline.codecs import avro, otlp

FUZZ_SERVICE_PREFIX = "fuzz-"
MIB = 1 << 20
NS_2_63 = (1 << 63) - 1
FAR_FUTURE_NS = 7_258_118_400 * 10**9  # 2200-01-01 (int64 nanoseconds end in 2262)
U64_MAX = (1 << 64) - 1  # OTLP times are fixed64: a producer can send this


# kinds made by mutating a good message at random: one may happen to decode (then it is not judged)
MUTATIONS = frozenset({"truncated", "bit_flipped"})


@dataclass
class Hostile:
    kind: str
    key: bytes | None
    value: bytes | None


def _span(rng: random.Random, **over) -> dict:
    start = 1_700_000_000 * 10**9 + rng.randrange(10**12)
    s = {
        "span_id": rng.randbytes(8),
        "parent_span_id": None,
        "name": "fuzz-op",
        "kind": "SERVER",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 1_000_000,
        "status_code": "UNSET",
        "status_message": "",
        "trace_state": "",
        "attributes": {"k": "v"},
        "events": [],
        "links": [],
    }
    s.update(over)
    return s


def _batch(rng: random.Random, trace_id: bytes | None = None, spans: list[dict] | None = None, **over) -> dict:
    b = {
        "trace_id": trace_id or rng.randbytes(16),
        "service": FUZZ_SERVICE_PREFIX + "svc",
        "spans": spans or [_span(rng)],
        "resource": {"service.name": FUZZ_SERVICE_PREFIX + "svc"},
        "scope_name": "fuzz",
    }
    b.update(over)
    return b


def encode(batch: dict, fmt: str) -> bytes:
    if fmt == "avro":
        spans = []
        for s in batch["spans"]:
            detail = {k: s[k] for k in ("status_message", "attributes", "events", "links")}
            head = {k: v for k, v in s.items() if k not in ("status_message", "attributes", "events", "links")}
            spans.append({**head, "detail": avro.encode_detail(detail)})
        return avro.encode_span_batch({**batch, "spans": spans})
    return otlp.encode_request([batch], fmt)


def job_time_bounds(cfg) -> SpanTimeBounds:
    """The span-time bounds a worker with this config enforces at ingest (README: ingest.max_clock_skew_ms)."""
    return SpanTimeBounds(int(cfg.sli.window_seconds * 1e9), cfg.ingest.max_clock_skew_ms * 1_000_000)


def still_valid(value: bytes | None, fmt: str, times: SpanTimeBounds | None = None, now_ns: int = 0) -> bool:
    """Whether the job must accept it at ingest: the wire format's own decoder reads it as a
    non-empty message with good IDs and — given the job's ``times`` bounds and the clock
    ``now_ns`` — span times the job accepts (a bit flip in a time field leaves a message that
    decodes, but one the job must dead-letter as ``invalid_timestamp``). What ingest does not
    read (Avro span details, OTLP events and links) is decoded only if the trace is kept, so a
    mutation there may or may not be dead-lettered: the suite judges neither way (``Truth.unjudged``)."""
    if not value:
        return False
    try:
        if fmt == "avro":
            b = avro.decode_batch(value)
            if times is not None and times.violation(b["spans"], now_ns) is not None:
                return False
            return bool(b["spans"]) and any(b["trace_id"])
        return bool(otlp.decode_traces(value, fmt, times, now_ns))
    except Exception:  # noqa: BLE001 - any decoder error means: not valid
        return False


def _deep(depth: int):
    v: object = "leaf"
    for _ in range(depth):
        v = [v]
    return v


def _invalid_utf8(batch: dict, fmt: str) -> bytes:
    """The span name's bytes replaced by invalid UTF-8 of the same length (no encoder writes it)."""
    marker = "\u00e9" * 8  # 16 bytes of UTF-8, unique in the message
    value = encode({**batch, "spans": [_span(random.Random(0), name=marker)]}, fmt)
    return value.replace(marker.encode(), b"\xff\xfe" * 8)


def field_cases(rng: random.Random, fmt: str) -> list[tuple[str, bytes]]:
    """Well-encoded messages with hostile fields."""
    t = 1_700_000_000 * 10**9
    cases = [
        ("time_zero", _batch(rng, spans=[_span(rng, start_time_unix_nano=0, end_time_unix_nano=0)])),
        ("time_2_63", _batch(rng, spans=[_span(rng, start_time_unix_nano=NS_2_63 - 10, end_time_unix_nano=NS_2_63)])),
        (
            "time_far_future",
            _batch(rng, spans=[_span(rng, start_time_unix_nano=FAR_FUTURE_NS, end_time_unix_nano=FAR_FUTURE_NS + 5)]),
        ),
        ("end_before_start", _batch(rng, spans=[_span(rng, start_time_unix_nano=t + 10**9, end_time_unix_nano=t)])),
        ("zero_trace_id", _batch(rng, trace_id=bytes(16))),
        ("zero_span_id", _batch(rng, spans=[_span(rng, span_id=bytes(8))])),
        ("attr_1mib", _batch(rng, spans=[_span(rng, attributes={"big": "A" * MIB})])),
        ("attrs_10000", _batch(rng, spans=[_span(rng, attributes={f"a{i}": i for i in range(10_000)})])),
    ]
    out = [(kind, encode(b, fmt)) for kind, b in cases]
    out.append(("invalid_utf8", _invalid_utf8(_batch(rng), fmt)))
    if fmt != "avro":  # Avro's fixed-size IDs and typed values cannot carry these
        out.append(("odd_trace_id_len", encode(_batch(rng, trace_id=rng.randbytes(15)), fmt)))
        out.append(("odd_span_id_len", encode(_batch(rng, spans=[_span(rng, span_id=rng.randbytes(7))]), fmt)))
        out.append(("time_2_64", encode(_batch(rng, spans=[_span(rng, end_time_unix_nano=U64_MAX)]), fmt)))
        out.append(("deep_array", encode(_batch(rng, spans=[_span(rng, attributes={"deep": _deep(90)})]), fmt)))
    return out


def messages(n: int, fmt: str, seed: int = 7) -> Iterator[Hostile]:
    """``n`` hostile messages: a mix of random bytes, truncations, bit flips, hostile fields,
    tombstones, and unkeyed or wrongly keyed versions of them."""
    rng = random.Random(seed)
    fields = field_cases(rng, fmt)
    for i in range(n):
        r = i % 10
        tid = rng.randbytes(16)
        good = encode(_batch(rng, trace_id=tid), fmt)
        if r == 0:
            yield Hostile("random_bytes", tid, rng.randbytes(rng.randrange(1, 2048)))
        elif r == 1:
            yield Hostile("truncated", tid, good[: rng.randrange(1, len(good))])
        elif r == 2:
            flipped = bytearray(good)
            for _ in range(rng.randrange(1, 9)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            yield Hostile("bit_flipped", tid, bytes(flipped))
        elif r in (3, 4, 5):
            kind, value = fields[(i // 10 * 3 + r - 3) % len(fields)]
            yield Hostile(kind, tid, value)
        elif r == 6:
            yield Hostile("tombstone", tid, None)
        elif r == 7:
            yield Hostile("empty_value", tid, b"")
        elif r == 8:
            yield Hostile("unkeyed_garbage", None, rng.randbytes(rng.randrange(1, 512)))
        else:
            yield Hostile(
                "wrong_key_garbage", rng.randbytes(rng.randrange(0, 40)), rng.randbytes(rng.randrange(1, 512))
            )
