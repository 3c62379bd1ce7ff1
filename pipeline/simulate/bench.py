"""``make bench``'s simulate line: replay generated messages through simulate's core (one
``Job`` per config, simulated event time), no Kafka, one core. Also ``python -m
pipeline.simulate.bench [TRACES]``."""

from __future__ import annotations

import sys
import time

from pipeline import config as config_mod
from pipeline.capture import Message
from pipeline.generator import GeneratorConfig, TraceGenerator
from pipeline.kafka.partitioner import canonical_partition
from pipeline.simulate.replay import Replay, SimConfig, merged

T0 = 1_800_000_000_000_000_000


def generated_messages(traces: int, partitions: int = 6, seed: int = 7, every_ms: float = 5.0) -> dict[int, list]:
    """Per partition, in offset order, the messages ``tailsift generate`` would write for
    ``traces`` traces started ``every_ms`` apart (Kafka timestamp = the batch's export time)."""
    gen = TraceGenerator(GeneratorConfig(seed=seed))
    rows: dict[int, list] = {p: [] for p in range(partitions)}
    for i in range(traces):
        tr = gen.trace(T0 + int(i * every_ms * 1_000_000))
        p = canonical_partition(tr.trace_id, partitions)
        rows[p].extend((at, tr.trace_id, value) for value, at in zip(tr.encoded, tr.export_ns))
    return {
        p: [Message(p, off, at // 1_000_000, key, value) for off, (at, key, value) in enumerate(sorted(r, key=_first))]
        for p, r in rows.items()
    }


def _first(row: tuple) -> int:
    return row[0]


def bench_simulate(traces: int = 3_000, out=print) -> float:
    """Spans per second of one config's replay (the default config: errors, slow, 5 %; privacy on)."""
    messages = generated_messages(traces)
    replay = Replay([SimConfig("candidate", "<defaults>", config_mod.parse({}, "<defaults>"))], [1000.0])
    started, cpu = time.perf_counter(), time.process_time()
    replay.feed(merged(messages))
    replay.finish()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    spans = replay.spans
    rate = spans / seconds
    out(
        f"simulate: {sum(map(len, messages.values())):,} messages ({spans:,} spans) replayed through the job core "
        f"(decode, assemble, decide, protect; no Kafka) in {seconds:.2f} s: {rate:,.0f} spans/s per config "
        f"({spans / cpu:,.0f} spans per CPU-second)"
    )
    return rate


if __name__ == "__main__":
    import os
    import secrets

    os.environ.setdefault("TAILSIFT_TOKEN_KEYS", "bench:" + secrets.token_hex(32))
    bench_simulate(int(sys.argv[1]) if len(sys.argv) > 1 else 3_000)
