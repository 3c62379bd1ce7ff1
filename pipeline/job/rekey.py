"""Re-keying, the Python reference: spans of one trace must meet on one partition, so a message
off its traces' canonical partition (``pipeline.kafka.partitioner``) is re-published there — one
copy per destination partition holding every trace bound for it (one per trace, keyed by its trace
ID, while the partition count is unknown). ``place`` is what the native core's ``ingest_otlp`` and
``ingest_avro`` do in Rust (``NativeCodec.decode_placed``, ``native/src/rekey.rs``,
``native/src/avro_ingest.rs``); this one serves the Python core and OTLP JSON, and is the
reference ``tests/unit/test_native_rekey.py`` holds the Rust ones to."""

from __future__ import annotations

from pipeline.codecs import otlp
from pipeline.codecs.interface import Codec, Fragment, Rekeyed
from pipeline.job.records import Received
from pipeline.kafka.partitioner import COLLECTOR, Partitioning


def misplaced(place: Partitioning, partitions: int, msg: Received, trace_id: bytes) -> bool:
    """True when ``msg`` must be re-keyed: not keyed by its trace ID (16 bytes or 32 hex
    characters; under ``ingest.partitioning: collector`` only the hex), or — with the input's
    partition count known — not on the trace's canonical partition, as when a producer keyed it
    right but partitioned it with another hash (librdkafka's default CRC32, or the Collector's
    FNV-1a under the default partitioning, say)."""
    if not otlp.key_matches(msg.key, trace_id) or (place is COLLECTOR and msg.key != place.key(trace_id)):
        return True
    return bool(partitions) and place.partition(trace_id, partitions) != msg.partition


# A message's copies together may hold at most this many records' worth of bytes: each copy
# repeats its resource and scope, so a hostile request — one large resource over thousands of
# one-span traces — would otherwise split into gigabytes (a 1 MB request into ~5 GB, measured
# shape below, one copy per trace: the partition count unknown, or a topic of thousands of
# partitions). Real traffic stays far below: 1 MB of 300-byte spans, one trace each, under a 4 KB
# resource makes ~13 MB of copies one per trace, far less one per partition.
MAX_COPIES_RECORDS = 16


def max_copies_bytes(max_record_bytes: int) -> int:
    return MAX_COPIES_RECORDS * max_record_bytes


def place(
    codec: Codec,
    placement: Partitioning,
    partitions: int,
    max_record_bytes: int,
    msg: Received,
    fragments: list[Fragment],
) -> list[Fragment] | Rekeyed:
    """An accepted message's ``fragments`` when it stays where it arrived, else its re-keyed copies
    (``Rekeyed``). One trace: it stays unless ``misplaced``; its copy is the message itself under
    the trace's canonical key. Several traces, the partition count known: it stays when every
    trace's canonical partition is the one it sits on (whatever its key); else its traces are
    grouped by canonical partition and each group becomes one copy (split by the codec: their spans
    in message order), on that partition, keyed by the trace when it holds one (then it is exactly
    the copy a single trace gets, and stays where it lands by the single-trace rule), without a key
    otherwise (the partition places it); the message itself, keyless, when all of them are bound
    for one partition. Several traces, the count unknown (0): one copy per trace,
    keyed, by key. Copies come in the order their first trace appears in the message. Too large to
    re-key (``Rekeyed(None, fragments)``: buffered where it arrived) when one copy would be larger
    than ``max_record_bytes`` or all of them larger than ``MAX_COPIES_RECORDS`` records — found
    while splitting, so no more than that is ever built."""
    if len(fragments) == 1:
        trace_id = fragments[0].trace_id
        if not misplaced(placement, partitions, msg, trace_id):
            return fragments
        if len(msg.value) > max_record_bytes:
            return Rekeyed(None, fragments)
        where = placement.partition(trace_id, partitions) if partitions else None
        return Rekeyed([(placement.key(trace_id), where, msg.value)])
    bound: list[tuple[int | None, list[Fragment]]]
    if partitions:
        homes: dict[int, list[Fragment]] = {}
        for f in fragments:
            homes.setdefault(placement.partition(f.trace_id, partitions), []).append(f)
        if homes.keys() == {msg.partition}:
            return fragments
        if len(homes) == 1:  # every trace bound for one other partition: the message itself moves
            if len(msg.value) > max_record_bytes:
                return Rekeyed(None, fragments)
            return Rekeyed([(None, next(iter(homes)), msg.value)])
        bound = list(homes.items())
    else:
        bound = [(None, [f]) for f in fragments]
    parts: list[tuple[bytes | None, int | None, bytes]] = []
    total, budget = 0, max_copies_bytes(max_record_bytes)
    for partition, group in bound:
        part = codec.split(msg.value, group)
        total += len(part)
        if len(part) > max_record_bytes or total > budget:
            return Rekeyed(None, fragments)
        parts.append((placement.key(group[0].trace_id) if len(group) == 1 else None, partition, part))
    return Rekeyed(parts)
