"""The job core alone on ``make bench-peer``'s traffic (or ``make bench``'s): CPU µs per span, no Kafka.

    python -m pipeline.peerbench.core [--traces 5000] [--unkeyed | --avro] [--no-privacy] [--profile N]

The same OTLP input the peer benchmark pre-fills (``pipeline.peerbench.traffic``, one 5,000-span
trace included), the same tailsift config (``run.tailsift_config``: errors, latency ≥ 500 ms,
probabilistic 5 %, decision wait 1 s, exactly_once), fed to ``Job.ingest`` in batches of 500 on a
simulated clock (10 ms per batch, a ``collect`` every 10 batches, then every trace drained; re-keyed
copies are ingested again, as they come back from the input topic).
Prints this process's CPU time per span — the figure ``make bench-peer`` measures, minus librdkafka
and the broker — so a change to the per-span path can be measured in seconds on a busy machine;
``--profile N`` prints the N costliest functions (cProfile, which inflates Python-heavy code).
Privacy on uses a throw-away token key unless ``TAILSIFT_TOKEN_KEYS`` is set.

``--avro``: ``make bench``'s traffic and config instead — the generator's Avro ``SpanBatch``
messages (``GeneratorConfig(seed=7)``, ~3 spans per message, PII in most traces) on 6 partitions
placed by murmur2 of the trace ID, ``run_config`` with the bench's overrides (decision wait 1 s,
10 s SLI windows, exactly_once, privacy on).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import tempfile
import time
from pathlib import Path

from pipeline.app import tune_gc
from pipeline.demo import run_config
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from pipeline.job import Job
from pipeline.job.records import Received
from pipeline.kafka.partitioner import COLLECTOR, canonical_partition
from pipeline.peerbench import traffic as peer_traffic
from pipeline.peerbench.run import tailsift_config

PARTITIONS = 6
BATCH = 500
STEP_NS = 10_000_000  # simulated clock per consumed batch
COLLECT_EVERY = 10  # batches per commit interval


def messages(traffic: peer_traffic.Traffic) -> list[Received]:
    """The traffic placed on partitions as the bench topic holds it (keyed: the Collector's FNV-1a
    placement of the hex key; unkeyed: round robin)."""
    out, offsets = [], [0] * PARTITIONS
    for key, value in traffic.messages:
        if key is not None:
            p = COLLECTOR.partition(bytes.fromhex(key.decode()), PARTITIONS)
        else:
            p = len(out) % PARTITIONS
        out.append(Received(p, offsets[p], key, value, 0))
        offsets[p] += 1
    return out


def avro_messages(traces: int, start_ns: int) -> tuple[list[Received], int]:
    """``make bench``'s generated traffic (``tailsift bench``: seed 7), the traces started 1 ms
    apart and ending before ``start_ns``, in export order on the canonical partitions; and its
    span count."""
    gen = TraceGenerator(GeneratorConfig(seed=7))
    t0 = start_ns - 60_000_000_000 - traces * 1_000_000
    rows = []
    spans = 0
    for i in range(traces):
        tr = gen.trace(t0 + i * 1_000_000)
        spans += tr.span_count
        rows.extend((at, tr.trace_id, value) for value, at in zip(tr.encoded, tr.export_ns))
    rows.sort(key=lambda row: row[0])
    out, offsets = [], [0] * PARTITIONS
    for _, key, value in rows:
        p = canonical_partition(key, PARTITIONS)
        out.append(Received(p, offsets[p], key, value, 0))
        offsets[p] += 1
    return out, spans


def drive(job: Job, msgs: list[Received], start_ns: int) -> int:
    """Ingest every message, collecting as the worker would, then drain; returns records written."""
    now, written = start_ns, 0
    queue = list(msgs)  # re-keyed copies join the end, as they come back from the input topic
    offsets = [max((m.offset for m in msgs if m.partition == p), default=-1) + 1 for p in range(PARTITIONS)]

    def collect(flush_all: bool = False) -> None:
        nonlocal written
        outbox = job.collect(now, flush_all_windows=flush_all)
        job.delivered(outbox.records)
        job.ready()
        written += len(outbox.records)
        for r in outbox.records:
            if r.topic == job.input_topic:
                queue.append(Received(r.partition, offsets[r.partition], r.key, r.value, 0))
                offsets[r.partition] += 1

    n = i = 0
    while i < len(queue):
        job.ingest(queue[i : i + BATCH], now)
        i += BATCH
        n += 1
        now += STEP_NS
        if n % COLLECT_EVERY == 0:
            collect()
    deadline = now + 600 * 1_000_000_000
    while (len(job.assembler) or len(job.tracker) or i < len(queue)) and now < deadline:
        if i < len(queue):
            job.ingest(queue[i : i + BATCH], now)
            i += BATCH
        now += 100_000_000
        collect(flush_all=True)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", type=int, default=5_000)
    p.add_argument("--unkeyed", action="store_true", help="200-span multi-trace messages (re-keyed)")
    p.add_argument("--avro", action="store_true", help="make bench's generated Avro traffic and config")
    p.add_argument("--no-privacy", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="runs over the same messages; the best is printed")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    args = p.parse_args(argv)
    privacy = not args.no_privacy
    if privacy and not os.environ.get("TAILSIFT_TOKEN_KEYS"):
        os.environ["TAILSIFT_TOKEN_KEYS"] = f"bench:{secrets.token_hex(32)}"
    start = time.time_ns() - 1_000_000_000
    with tempfile.TemporaryDirectory(prefix="tailsift-core-") as tmp:
        if args.avro:
            shape = "avro"
            msgs, spans = avro_messages(args.traces, start)
            overrides = {"assemble": {"decision_wait_ms": 1000}, "sli": {"window_seconds": 10, "grace_seconds": 1}}
            if not privacy:
                overrides["privacy"] = {"enabled": False}
            _, config = run_config("127.0.0.1:1", "core", Path(tmp), **overrides)
        else:
            shape = "unkeyed" if args.unkeyed else "keyed"
            keyed, unkeyed = peer_traffic.generate(args.traces, start_ns=start, big_traces=1)
            traffic = unkeyed if args.unkeyed else keyed
            _, config = tailsift_config("127.0.0.1:1", "core", Path(tmp), privacy)
            msgs, spans = messages(traffic), traffic.spans
        tune_gc()  # the collector as `tailsift run` sets it (the generated input frozen with the rest)
        profiler = cProfile.Profile() if args.profile else None
        cpu = float("inf")
        for _ in range(1 if profiler else max(1, args.repeat)):
            job = Job(config)  # a fresh job per run: same input, same decisions
            job.input_partitions = PARTITIONS
            t0 = time.process_time()
            if profiler:
                profiler.enable()
            written = drive(job, msgs, start)
            if profiler:
                profiler.disable()
            cpu = min(cpu, time.process_time() - t0)
    print(
        f"job core, {shape}, privacy {'on' if privacy else 'off'}, core {config.ingest_core()}: "
        f"{spans:,} spans in {len(msgs):,} messages, {written:,} records; "
        f"{cpu:.2f} CPU-s = {cpu / spans * 1e6:.1f} µs/span = {spans / cpu:,.0f} spans/CPU-s"
        + (" (under cProfile)" if profiler else f" (best of {args.repeat})")
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
