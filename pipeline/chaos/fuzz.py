"""Hostile messages, in either wire format, each labelled with what it is.

Every message is built from its own throw-away trace (never a trace of the good traffic), with
services named ``fuzz-*``, so what the job does with it cannot disturb the exactness checks of
the good traffic — only the fuzz figures. A mutated message (truncated, bit-flipped) that still
decodes as a well-formed message of the wire format is not hostile any more: ``still_valid``
says so, checked with the wire format's own codec, and the suite does not demand a dead letter
for it."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from operators.span_times import SpanTimeBounds
from pipeline import codecs
from pipeline.codecs import avro, otlp
from pipeline.codecs.interface import SpanLimits
from pipeline.config import IngestConfig, SliConfig

FUZZ_SERVICE_PREFIX = "fuzz-"
MIB = 1 << 20
NS_2_63 = (1 << 63) - 1
FAR_FUTURE_NS = 7_258_118_400 * 10**9  # 2200-01-01 (int64 nanoseconds end in 2262)
U64_MAX = (1 << 64) - 1  # OTLP times are fixed64: a producer can send this


# kinds made by mutating a good message at random: one may happen to decode (then it is not judged)
MUTATIONS = frozenset({"truncated", "bit_flipped"})
# odd but valid: the job takes these as data (README "Guarantees"), so the suite counts them as good
# traffic — their spans in the SLIs, their trace decided — under their own service, not fuzz-*
DATA_KINDS = frozenset({"start_after_end_within_skew"})
DATA_SERVICE = "odd-data"


@dataclass
class Hostile:
    kind: str
    key: bytes | None
    value: bytes | None
    batch: dict | None = None  # DATA_KINDS: what it holds, for the ground truth


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


def still_valid(value: bytes | None, fmt: str, now_ns: int | None = None) -> bool:
    """Whether the job, as configured by default, takes it: the wire format's codec decodes it
    into spans and its checks pass (ids, span times against ``now_ns``, per-span limits). Only
    the decoder used to be asked: a bit flip in a span time still decoded, the job dead-lettered
    it as ``invalid_timestamp``, and the suite counted a good message dead-lettered."""
    if not value:
        return False
    ingest = IngestConfig()
    bounds = SpanTimeBounds(int(SliConfig().window_seconds * 1e9), ingest.max_clock_skew_ms * 1_000_000)
    limits = SpanLimits(ingest.max_span_bytes, ingest.max_attributes_per_span)
    try:
        return bool(codecs.for_format(fmt, bounds, limits).decode(value, now_ns or time.time_ns()))
    except Exception:  # noqa: BLE001 - Malformed, or anything else: not valid
        return False


def truth_batches(value: bytes, fmt: str) -> list[tuple[bytes, list[dict]]]:
    """(trace ID, SpanBatch-shaped dicts) of a message ``still_valid`` accepts, for the ground truth."""
    if fmt == "avro":
        b = avro.decode_batch(value)
        return [(b["trace_id"], [b])]
    return [
        (tid, [{"service": g[2], "spans": g[3]} for g in t.groups]) for tid, t in otlp.decode_traces(value, fmt).items()
    ]


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
        # beyond ingest.max_clock_skew_ms (5 min); within it a start after the end is data (DATA_KINDS)
        (
            "end_before_start",
            _batch(rng, spans=[_span(rng, start_time_unix_nano=t + 3600 * 10**9, end_time_unix_nano=t)]),
        ),
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


def skewed_span(rng: random.Random, fmt: str) -> Hostile:
    """A span that starts 1 s after it ends — within the clock skew the job allows (a span whose
    start and end come from different clocks); its own trace, keyed by its trace ID."""
    tid = rng.randbytes(16)
    end = 1_700_000_000 * 10**9 + rng.randrange(10**12)
    spans = [_span(rng, name="skewed-op", start_time_unix_nano=end + 10**9, end_time_unix_nano=end)]
    batch = _batch(rng, trace_id=tid, spans=spans, service=DATA_SERVICE, resource={"service.name": DATA_SERVICE})
    return Hostile("start_after_end_within_skew", tid, encode(batch, fmt), batch)


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
            if r == 5 and i // 10 % 4 == 0:  # now and then an odd but valid message, fresh each time
                yield skewed_span(rng, fmt)
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
