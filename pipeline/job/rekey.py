"""Re-keying, the Python reference: spans of one trace must meet on one partition, so a message
off its traces' canonical partition (``pipeline.kafka.partitioner``) is re-published per trace,
keyed by its trace ID. ``place`` is what the native core's ``ingest_otlp`` and ``ingest_avro`` do
in Rust (``NativeCodec.decode_placed``, ``native/src/rekey.rs``, ``native/src/avro_ingest.rs``);
this one serves the Python core and OTLP JSON, and is the reference
``tests/unit/test_native_rekey.py`` holds the Rust ones to."""

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
# shape below). Real traffic stays far below: 1 MB of 300-byte spans, one trace each, under a 4 KB
# resource makes ~13 MB of copies.
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
    (``Rekeyed``): one per trace, split by the codec, under the trace's canonical key and — with
    the partition count known — partition (set here: the producer's murmur2 alone would misplace
    a copy under ``ingest.partitioning: collector``). Too large to re-key (``Rekeyed(None,
    fragments)``: buffered where it arrived) when one copy would be larger than
    ``max_record_bytes`` or all of them larger than ``MAX_COPIES_RECORDS`` records — found while
    splitting, so no more than that is ever built."""
    if len(fragments) == 1:
        trace_id = fragments[0].trace_id
        if not misplaced(placement, partitions, msg, trace_id):
            return fragments
        split = [(trace_id, msg.value)]
        if len(msg.value) > max_record_bytes:
            return Rekeyed(None, fragments)
    else:
        split, total, budget = [], 0, max_copies_bytes(max_record_bytes)
        for f in fragments:
            part = codec.split(msg.value, f)
            total += len(part)
            if len(part) > max_record_bytes or total > budget:
                return Rekeyed(None, fragments)
            split.append((f.trace_id, part))
    return Rekeyed(
        [
            (placement.key(trace_id), placement.partition(trace_id, partitions) if partitions else None, part)
            for trace_id, part in split
        ]
    )
