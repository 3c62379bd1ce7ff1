"""The job core alone on ``make bench-peer``'s traffic: CPU µs per span, no Kafka.

    python -m pipeline.peerbench.core [--traces 5000] [--unkeyed] [--no-privacy] [--profile N]

The same OTLP input the peer benchmark pre-fills (``pipeline.peerbench.traffic``, one 5,000-span
trace included), the same tailsift config (``run.tailsift_config``: errors, latency ≥ 500 ms,
probabilistic 5 %, decision wait 1 s, exactly_once), fed to ``Job.ingest`` in batches of 500 on a
simulated clock (10 ms per batch, a ``collect`` every 10 batches, then every trace drained; re-keyed
copies are ingested again, as they come back from the input topic).
Prints this process's CPU time per span — the figure ``make bench-peer`` measures, minus librdkafka
and the broker — so a change to the per-span path can be measured in seconds on a busy machine;
``--profile N`` prints the N costliest functions (cProfile, which inflates Python-heavy code).
Privacy on uses a throw-away token key unless ``TAILSIFT_TOKEN_KEYS`` is set.
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

from pipeline.job import Job
from pipeline.job.records import Received
from pipeline.kafka.partitioner import COLLECTOR
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
    p.add_argument("--no-privacy", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="runs over the same messages; the best is printed")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    args = p.parse_args(argv)
    privacy = not args.no_privacy
    if privacy and not os.environ.get("TAILSIFT_TOKEN_KEYS"):
        os.environ["TAILSIFT_TOKEN_KEYS"] = f"bench:{secrets.token_hex(32)}"
    start = time.time_ns() - 1_000_000_000
    keyed, unkeyed = peer_traffic.generate(args.traces, start_ns=start, big_traces=1)
    traffic = unkeyed if args.unkeyed else keyed
    with tempfile.TemporaryDirectory(prefix="tailsift-core-") as tmp:
        _, config = tailsift_config("127.0.0.1:1", "core", Path(tmp), privacy)
        msgs = messages(traffic)
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
    shape = "unkeyed" if args.unkeyed else "keyed"
    print(
        f"job core, {shape}, privacy {'on' if privacy else 'off'}, core {config.ingest_core()}: "
        f"{traffic.spans:,} spans in {len(msgs):,} messages, {written:,} records; "
        f"{cpu:.2f} CPU-s = {cpu / traffic.spans * 1e6:.1f} µs/span = {traffic.spans / cpu:,.0f} spans/CPU-s"
        + (" (under cProfile)" if profiler else f" (best of {args.repeat})")
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
