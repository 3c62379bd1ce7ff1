"""``tailsift bench`` / ``make bench``: end-to-end throughput against the floor, in one run.

1. Pre-fill a fresh topic with generated traces.
2. Floor: a bare confluent-kafka consumer (consume(500)) plus the same batch decode the job does,
   over the same topic — what any Python consumer of this data must pay.
3. Pipeline: ``tailsift run`` as its own process drains the topic (decide, emit kept traces,
   SLI windows, commit). Throughput is spans / (last span ingested − first span ingested), from
   the job's own /metrics; the drain time also counts the decision wait and the commit tail.
Prints both figures and their ratio. Not part of ``make test``: figures depend on the machine."""

from __future__ import annotations

import sys

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from pipeline.codecs import avro
from pipeline.demo import delete_topics, ensure_token_key, run_config
from pipeline.jobproc import JobProcess
from pipeline.localkafka import broker
from pipeline.topics import create_topics


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def floor(bootstrap: str, topic: str, partitions: int, messages: int) -> tuple[float, int, int]:
    """Consume every message and decode its batch; returns (seconds, messages, spans)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "fetch.max.bytes": 52_428_800})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    n = spans = 0
    t0 = None
    deadline = time.monotonic() + 300
    while n < messages:
        # a short timeout: consume(N, t) waits for N messages or t, so a long one would add its
        # whole length to the final, partial batch (a 5 s timeout once hid 98% of this figure)
        batch = c.consume(500, timeout=0.05)
        if not batch:
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor consumer stalled at {n}/{messages} messages")
            continue
        if t0 is None:
            t0 = time.perf_counter()
        for msg in batch:
            if msg.error():
                continue
            spans += len(avro.decode_batch(msg.value())["spans"])
            n += 1
    elapsed = time.perf_counter() - t0
    c.close()
    return elapsed, n, spans


def main(args: argparse.Namespace) -> int:
    from pipeline.generator.callgraph import GeneratorConfig
    from pipeline.generator.produce import produce

    console = Console(width=None if sys.stdout.isatty() else 120)
    with broker(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory(prefix="tailsift-bench-") as tmp:
        ensure_token_key(console)
        run_id = f"bench-{uuid.uuid4().hex[:6]}"
        path, cfg = run_config(bootstrap, run_id, Path(tmp), assemble={"decision_wait_ms": 1000},
                               sli={"window_seconds": 10, "grace_seconds": 1})
        create_topics(cfg)
        topic, partitions = cfg.topics.spans_raw.name, cfg.topics.spans_raw.partitions
        try:
            console.print(f"pre-filling {topic} with {args.traces:,} traces …")
            stats = produce(bootstrap, topic, count=args.traces, duration_s=None, rate=None,
                            config=GeneratorConfig(seed=7), progress=True)
            f_secs, f_msgs, f_spans = floor(bootstrap, topic, partitions, stats.messages)
            assert f_spans == stats.spans, (f_spans, stats.spans)

            job = JobProcess(path, cfg.metrics.port, Path(tmp) / "job.log")
            job.start()
            try:
                job.wait_ready(bootstrap, cfg.kafka.group_id)
                cpu0 = cpu_seconds(job.proc.pid)
                first = last = None
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    ingested = job.metric("tailsift_spans_ingested_total")
                    now = time.perf_counter()
                    if ingested > 0 and first is None:
                        first = (now, ingested)
                    if ingested >= stats.spans:
                        last = now
                        break
                    time.sleep(0.25)  # each scrape costs the job CPU (~7% at 10 Hz, profiled)
                if first is None or last is None:
                    raise RuntimeError(f"pipeline did not ingest all spans; log:\n{job.log_tail()}")
                cpu_ingest = cpu_seconds(job.proc.pid) - cpu0
                metrics = job.wait_drained(stats.spans, timeout=300)
                drained = time.perf_counter()
            finally:
                job.stop()
        finally:
            delete_topics(cfg)

    p_spans = stats.spans - first[1]  # spans ingested after the first sample
    p_secs = last - first[0]
    p_rate = p_spans / p_secs if p_secs > 0 else float("inf")
    f_rate = f_spans / f_secs
    kept = sum(v for k, v in metrics.items() if k.startswith("tailsift_traces_decided_total") and "decision=keep" in k)
    decided = sum(v for k, v in metrics.items() if k.startswith("tailsift_traces_decided_total"))

    t = Table(title=f"tailsift bench: {stats.traces:,} traces, {stats.spans:,} spans in {stats.messages:,} messages, {partitions} partitions")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("floor: confluent-kafka consume(500) + batch decode", f"{f_rate:,.0f} spans/s ({f_msgs / f_secs:,.0f} msgs/s)")
    t.add_row("pipeline: tailsift run (decode, assemble, decide, SLIs, emit, commit)", f"{p_rate:,.0f} spans/s ({p_rate * stats.messages / stats.spans:,.0f} msgs/s)")
    t.add_row("ratio pipeline / floor", f"{p_rate / f_rate:.2f}")
    t.add_row("job CPU per span while ingesting", f"{1e6 * cpu_ingest / max(p_spans, 1):.1f} µs")
    t.add_row("drain: first span in → all offsets committable", f"{drained - first[0]:.1f} s (incl. 1 s decision wait)")
    t.add_row("kept traces", f"{kept:,.0f} of {decided:,.0f} ({100 * kept / decided if decided else 0:.1f}%)")
    console.print(t)
    print(f"BENCH floor_spans_per_s={f_rate:.0f} pipeline_spans_per_s={p_rate:.0f} ratio={p_rate / f_rate:.3f}")

    from pipeline.privacy import bench_protect

    console.print("[bold]PII protection[/] (kept traces only; one core, no Kafka):")
    bench_protect(out=lambda line: console.print("  " + line))

    from pipeline.sli_reader import bench_sli

    console.print("[bold]SLI operator[/] (every span, before sampling; one core, no Kafka):")
    bench_sli(out=lambda line: console.print("  " + line))
    return 0
