"""``tailsift bench`` / ``make bench``: end-to-end throughput against the floor, in one run.

1. Pre-fill a fresh topic with generated traces.
2. Floor: a bare confluent-kafka consumer (consume(500)) plus the same batch decode the job does,
   over the same topic — what any Python consumer of this data must pay.
3. Pipeline: ``tailsift run`` as its own process drains the topic (decide, emit kept traces,
   SLI windows, commit), once per delivery guarantee (exactly_once, at_least_once), each as its
   own consumer group. Throughput is spans / (last span ingested − first span ingested), from
   the job's own /metrics; the drain time also counts the decision wait and the commit tail;
   decision latency p50/p99 from the job's histogram.
   Scale-out: two workers in one group, uncapped (what this machine's spare cores allow) and — as
   workers are deployed, each with a CPU limit — one worker and two workers with ``--worker-cpu``
   cores each (a CFS quota on a cgroup per worker, ``pipeline.cpubudget``; removed afterwards).
4. Memory per buffered span (job core, tracemalloc), PII protection and SLI operator costs, and
   ``tailsift simulate``'s replay speed (spans/s through the job core, no Kafka).
Prints the figures and their ratios. Not part of ``make test``: figures depend on the machine."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from pipeline import config as config_mod
from pipeline import cpubudget
from pipeline.codecs import avro, otlp
from pipeline.demo import delete_topics, ensure_token_key, free_port, run_config
from pipeline.jobproc import JobProcess
from pipeline.kafka import clients
from pipeline.localkafka import broker
from pipeline.readback import read_all
from pipeline.topics import create_topics


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def floor(bootstrap: str, topic: str, partitions: int, messages: int) -> tuple[float, int, int]:
    """Consume every message and decode its batch; returns (seconds, messages, spans)."""
    c = Consumer(
        {
            **clients.connection(bootstrap),
            "group.id": f"floor-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
        }
    )
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


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    """A quantile from a scraped Prometheus histogram, interpolated within its bucket (as PromQL)."""
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}")), v) for k, v in metrics.items() if k.startswith(name + "_bucket{")
    )
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def as_otlp(value: bytes) -> bytes:
    """A generated Avro ``SpanBatch`` as the OTLP request an OTel SDK exporter would send."""
    batch = avro.decode_batch(value)
    for span in batch["spans"]:
        span.update(avro.decode_detail(span.pop("detail")))
    batch["resource"] = avro.decode_resource(batch["resource"])
    return otlp.encode_request([batch])


def memory_per_buffered_span(traces: int = 3000, fmt: str = "avro") -> tuple[float, float, int]:
    """(bytes per buffered span beyond its raw message bytes, raw bytes per span, spans): generated
    traces (``fmt``: avro or otlp_proto) ingested by the job core with a decision wait that never
    ends, measured with tracemalloc."""
    import gc
    import tracemalloc

    from pipeline import config as config_mod
    from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
    from pipeline.job import Job, Received

    gen = TraceGenerator(GeneratorConfig(seed=3))
    messages = []
    t0 = 1_700_000_000_000_000_000
    now_ns = t0 + 3_600 * 10**9  # the job clock after the traces (it refuses spans that end ahead of it)
    for i in range(traces):
        for key, value in gen.trace(t0 + i * 1_000_000).messages():
            messages.append(Received(0, len(messages), key, value if fmt == "avro" else as_otlp(value)))
    job = Job(
        config_mod.parse(
            {
                "privacy": {"enabled": False},
                "ingest": {"format": fmt},
                "assemble": {"decision_wait_ms": 3_600_000, "root_quiet_gap_ms": 0},
            }
        ),
        worker_id="bench",
    )
    job.ingest(messages[:50], now_ns)  # warm caches (operation labels, sketches) outside the measurement
    warm_spans = job.assembler.buffered_spans
    rest = messages[50:]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    job.ingest(rest, now_ns)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    spans = job.assembler.buffered_spans
    spans_measured = spans - warm_spans
    raw_measured = sum(len(m.value) for m in rest)
    # the raw values are allocated before the measurement (they stand for Kafka's fetch buffers),
    # so ``after - before`` is what buffering adds on top of them
    return (after - before) / spans_measured, raw_measured / spans_measured, spans


def next_scrape(first: tuple[float, float] | None, now: float, ingested: float, spans: int) -> float:
    """Seconds until the next /metrics scrape while the job drains: 0.25 s until it has started
    and once the end is near (so the end is timed as closely as before), in between half the time
    left at the rate so far, at most 5 s. Each scrape costs the job CPU — a fixed 4 Hz put ~10 % of
    the measured job's CPU into serving /metrics (py-spy) — and that CPU was counted as the job's."""
    if first is None or now <= first[0] or ingested <= first[1]:
        return 0.25
    rate = (ingested - first[1]) / (now - first[0])
    return min(max((spans - ingested) / rate / 2, 0.25), 5.0)


def decided_traces(bootstrap: str, topic: str) -> int:
    """Distinct traces in a run's decision log as committed (the all-zero key is a checkpoint)."""
    return len({key for _, _, key, _ in read_all(bootstrap, topic, timeout=60) if key and key != bytes(16)})


def wait_all_ingesting(jobs: list[JobProcess], spans: int, timeout: float = 60.0) -> None:
    """Until every worker has taken input. A worker holding partitions first restores their recent
    decisions (1.0 s here before eab7bb3, ~0.1 s since): with the clock started at the group's
    assignment, two workers drained a third of a 20,000-trace drain as one (two at 0.5 core each
    1.34-1.45x one, 1.94x over 60,000 traces). The figure is the throughput of the workers
    running; a rebalance's own pause is the chaos suite's measure (README "Guarantees")."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [job.metric("tailsift_spans_ingested_total") for job in jobs]
        if all(counts):
            return
        if sum(counts) >= spans or time.monotonic() > deadline:
            raise RuntimeError(f"not every worker took input before the topic was drained: {counts}")
        time.sleep(0.1)


def run_pipeline(
    paths: list[Path], cfg, bootstrap: str, log: Path, spans: int, budgets: list[cpubudget.CpuBudget] | None = None
) -> dict:
    """Drain the pre-filled topic with one ``tailsift run`` per config in ``paths`` (one worker each,
    same group; worker i in ``budgets[i]`` when given); throughput from the workers' /metrics, summed."""
    jobs = []
    for i, path in enumerate(paths):
        port = config_mod.load(path).metrics.port
        jobs.append(JobProcess(path, port, log.with_suffix(f".{i}.log")))
    try:
        for i, job in enumerate(jobs):
            job.start()
            if budgets:
                budgets[i].add(job.pid)
        # every worker holding partitions before the clock starts: with one, the others' joins
        # would rebalance the group inside the measured drain (revoke commit, restore, replay)
        for job in jobs:
            job.wait_ready(bootstrap, cfg.kafka.group_id, members=len(jobs))
        if len(jobs) > 1:
            wait_all_ingesting(jobs, spans)
        cpu0 = sum(cpu_seconds(job.proc.pid) for job in jobs)
        throttled0 = sum(b.throttled_s() for b in budgets or [])
        first = last = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            ingested = sum(job.metric("tailsift_spans_ingested_total") for job in jobs)
            now = time.perf_counter()
            if ingested > 0 and first is None:
                first = (now, ingested)
            if ingested >= spans:
                last = now
                break
            time.sleep(next_scrape(first, now, ingested, spans))
        if first is None or last is None:
            raise RuntimeError(f"pipeline did not ingest all spans; log:\n{jobs[0].log_tail()}")
        cpu_ingest = sum(cpu_seconds(job.proc.pid) for job in jobs) - cpu0
        throttled = sum(b.throttled_s() for b in budgets or []) - throttled0
        metrics: dict[str, float] = {}
        for job in jobs:
            for k, v in job.wait_idle(timeout=300).items():
                metrics[k] = metrics.get(k, 0.0) + v
        drained = time.perf_counter()
    finally:
        for job in jobs:
            job.stop()
    p_spans = spans - first[1]  # spans ingested after the first sample
    p_secs = last - first[0]
    return {
        "rate": p_spans / p_secs if p_secs > 0 else float("inf"),
        "cpu_per_span": cpu_ingest / max(p_spans, 1),
        "drain": drained - first[0],
        "metrics": metrics,
        "cpu_share": cpu_ingest / p_secs / len(jobs) if p_secs > 0 else float("nan"),  # cores per worker
        "throttled": throttled,
    }


def _triggers(metrics: dict[str, float]) -> str:
    """``tailsift_decision_points_total`` per trigger, e.g. "decision_wait 4,990, backlog_limit 10"."""
    prefix = "tailsift_decision_points_total{trigger="
    counts = {k[len(prefix) : -1]: v for k, v in metrics.items() if k.startswith(prefix)}
    return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v) or "-"


def budget_plan(cores: float, found: cpubudget.Hierarchy | str) -> tuple[cpubudget.Hierarchy | None, str]:
    """Whether the capped scale-out runs happen: (the hierarchy to cap in, "") or (None, why not)."""
    if cores <= 0:
        return None, "--worker-cpu 0"
    if isinstance(found, str):
        return None, found
    return found, ""


def scale_out_row(runs: dict[str, dict], cores: float, why_not: str, version: int | None) -> tuple[str, str]:
    """The capped scale-out row: one worker against two with ``cores`` each, from this run."""
    label = f"two workers vs one, {cores:g} core each (CFS quota per worker, as a Kubernetes CPU limit)"
    one, two = (
        runs.get(f"exactly_once, 1 worker, {cores:g} core"),
        runs.get(f"exactly_once, 2 workers, {cores:g} core each"),
    )
    if one is None or two is None:
        return label, f"not measured: {why_not}"
    return (
        label + f"; cgroup v{version}",
        f"{two['rate']:,.0f} vs {one['rate']:,.0f} spans/s = {two['rate'] / one['rate']:.2f}×; "
        f"cores used per worker {two['cpu_share']:.2f} / {one['cpu_share']:.2f}; "
        f"job CPU per span {1e6 * two['cpu_per_span']:.1f} / {1e6 * one['cpu_per_span']:.1f} µs; "
        f"held back by the quota {two['throttled']:.1f} / {one['throttled']:.1f} s",
    )


def _capped_ratio(runs: dict[str, dict], cores: float) -> str:
    one, two = (
        runs.get(f"exactly_once, 1 worker, {cores:g} core"),
        runs.get(f"exactly_once, 2 workers, {cores:g} core each"),
    )
    return "not_measured" if one is None or two is None else f"{two['rate'] / one['rate']:.2f}"


def main(args: argparse.Namespace) -> int:
    from pipeline.generator.callgraph import GeneratorConfig
    from pipeline.generator.produce import produce

    console = Console(width=None if sys.stdout.isatty() else 120)
    runs: dict[str, dict] = {}
    g_cfgs: list = []
    load = [os.getloadavg()[0], 0.0]  # the machine is shared: figures are read against it
    hierarchy, why_not = budget_plan(args.worker_cpu, cpubudget.usable() if args.worker_cpu > 0 else "")
    with broker(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory(prefix="tailsift-bench-") as tmp:
        ensure_token_key(console)
        run_id = f"bench-{uuid.uuid4().hex[:6]}"
        sections: dict[str, dict] = {
            "assemble": {"decision_wait_ms": 1000},
            "sli": {"window_seconds": 10, "grace_seconds": 1},
        }
        for item in args.set:  # --set section.key=value: the same bench with one setting changed
            name, _, value = item.partition("=")
            section, _, key = name.partition(".")
            sections.setdefault(section, {})[key] = yaml.safe_load(value)
        path, cfg = run_config(bootstrap, run_id, Path(tmp), **sections)
        create_topics(cfg)
        topic, partitions = cfg.topics.spans_raw.name, cfg.topics.spans_raw.partitions
        try:
            console.print(f"pre-filling {topic} with {args.traces:,} traces …")
            stats = produce(
                bootstrap,
                topic,
                count=args.traces,
                duration_s=None,
                rate=None,
                config=GeneratorConfig(seed=7),
                progress=True,
            )
            f_secs, f_msgs, f_spans = floor(bootstrap, topic, partitions, stats.messages)
            assert f_spans == stats.spans, (f_spans, stats.spans)
            # the same topic drained by each delivery guarantee, each its own consumer group
            # the same input drained by each delivery guarantee, each with its own consumer group and
            # its own output topics (a shared decision log would make the second run follow the
            # first run's decisions instead of deciding)
            plan: dict[str, tuple[str, int, float | None]] = {
                "exactly_once": ("exactly_once", 1, None),
                "at_least_once": ("at_least_once", 1, None),
                "exactly_once, 2 workers": ("exactly_once", 2, None),
            }
            if hierarchy is not None:
                c = args.worker_cpu
                plan[f"exactly_once, 1 worker, {c:g} core"] = ("exactly_once", 1, c)
                plan[f"exactly_once, 2 workers, {c:g} core each"] = ("exactly_once", 2, c)
            for run, (guarantee, workers, cores) in plan.items():
                slug = run.replace(", ", "-").replace(" ", "")
                data = yaml.safe_load(path.read_text())
                data["kafka"]["group_id"] = f"{run_id}-{slug}"
                data["job"]["processing_guarantee"] = guarantee
                for key, topic in data["topics"].items():
                    if key != "spans_raw":
                        topic["name"] = f"{topic['name']}.{slug}"
                g_paths = []
                for w in range(workers):
                    data["metrics"]["port"] = free_port()
                    g_path = Path(tmp) / f"{slug}.{w}.yaml"
                    g_path.write_text(yaml.safe_dump(data, sort_keys=False))
                    g_paths.append(g_path)
                g_cfg = config_mod.load(g_paths[0])
                create_topics(g_cfg)
                g_cfgs.append(g_cfg)
                console.print(f"pipeline run: {run} …")
                logs = Path(args.keep_logs) if args.keep_logs else Path(tmp)
                logs.mkdir(parents=True, exist_ok=True)
                log_path = logs / f"{slug}.log"
                if cores is None:
                    runs[run] = run_pipeline(g_paths, g_cfg, bootstrap, log_path, stats.spans)
                else:
                    assert hierarchy is not None
                    # removed on the way out of the block, also when the run fails
                    with cpubudget.budgets(hierarchy, workers, cores, f"tailsift-{run_id}-{slug}") as budgets:
                        runs[run] = run_pipeline(g_paths, g_cfg, bootstrap, log_path, stats.spans, budgets)
                # a figure for a run that skipped work would be meaningless: every trace once in the
                # decision log, read as committed — not the workers' counters, which also count the
                # decisions of a transaction a rebalance discarded and its new owner made again (seen:
                # "20247 of 20000 traces decided" with two workers on a loaded machine)
                decided = decided_traces(bootstrap, g_cfg.topics.decisions.name)
                if decided != stats.traces:
                    raise RuntimeError(f"{run}: {decided} of {stats.traces} traces in the decision log")
        finally:
            load[1] = os.getloadavg()[0]
            delete_topics(cfg)
            for g_cfg in g_cfgs:
                delete_topics(g_cfg)

    f_rate = f_spans / f_secs
    eos, alo = runs["exactly_once"], runs["at_least_once"]
    metrics = eos["metrics"]
    kept = sum(v for k, v in metrics.items() if k.startswith("tailsift_traces_decided_total") and "decision=keep" in k)
    decided = sum(v for k, v in metrics.items() if k.startswith("tailsift_traces_decided_total"))

    t = Table(
        title=f"tailsift bench: {stats.traces:,} traces, {stats.spans:,} spans in {stats.messages:,} messages, "
        f"{partitions} partitions"
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row(
        "floor: confluent-kafka consume(500) + batch decode", f"{f_rate:,.0f} spans/s ({f_msgs / f_secs:,.0f} msgs/s)"
    )
    for name, r in (("exactly_once", eos), ("at_least_once", alo)):
        t.add_row(
            f"pipeline, {name}: tailsift run (decode, assemble, decide, SLIs, emit, commit)",
            f"{r['rate']:,.0f} spans/s ({r['rate'] * stats.messages / stats.spans:,.0f} msgs/s)",
        )
        t.add_row(f"  ratio pipeline / floor ({name})", f"{r['rate'] / f_rate:.3f}")
        t.add_row(f"  job CPU per span while ingesting ({name})", f"{1e6 * r['cpu_per_span']:.1f} µs")
        lat = r["metrics"]
        t.add_row(
            f"  decision latency p50 / p99 ({name}): decision point → outputs written "
            f"(commits every {cfg.job.commit_interval_ms if name == 'exactly_once' else cfg.job.tick_ms} ms; "
            f"target p99 ≤ that + 250 ms)",
            f"{histogram_quantile(lat, 'tailsift_decision_latency_seconds', 0.5):.3f} / "
            f"{histogram_quantile(lat, 'tailsift_decision_latency_seconds', 0.99):.3f} s",
        )
        t.add_row(
            f"  loop step / commit p50 / p99 ({name}): ingest + decide + produce / windows + offsets + commit",
            f"{histogram_quantile(lat, 'tailsift_step_seconds', 0.5):.3f} / "
            f"{histogram_quantile(lat, 'tailsift_step_seconds', 0.99):.3f} s, "
            f"{histogram_quantile(lat, 'tailsift_flush_seconds', 0.5):.3f} / "
            f"{histogram_quantile(lat, 'tailsift_flush_seconds', 0.99):.3f} s",
        )
        t.add_row(
            f"  drain: first span in → all offsets committable ({name})",
            f"{r['drain']:.1f} s (incl. 1 s decision wait)",
        )
    for name, r in runs.items():  # what released the traces: a hold for the group or the backlog shows here
        t.add_row(f"  decision points by trigger ({name})", _triggers(r["metrics"]))
    t.add_row("cost of exactly_once (throughput at_least_once / exactly_once)", f"{alo['rate'] / eos['rate']:.2f}×")
    two = runs["exactly_once, 2 workers"]
    t.add_row(
        "two workers in one group, exactly_once, uncapped (same input, own outputs)",
        f"{two['rate']:,.0f} spans/s = {two['rate'] / eos['rate']:.2f}× one worker "
        f"({os.cpu_count()} cores shared with the broker and this bench); job CPU per span "
        f"{1e6 * two['cpu_per_span']:.1f} µs = {two['cpu_per_span'] / eos['cpu_per_span']:.2f}× one worker's",
    )
    capped = scale_out_row(runs, args.worker_cpu, why_not, hierarchy.version if hierarchy else None)
    t.add_row(*capped)
    t.add_row("load average (1 min) at the start / end of the pipeline runs", f"{load[0]:.1f} / {load[1]:.1f}")
    t.add_row("kept traces", f"{kept:,.0f} of {decided:,.0f} ({100 * kept / decided if decided else 0:.1f}%)")
    per_span, raw_per_span, n = memory_per_buffered_span()
    t.add_row(
        f"memory per buffered span beyond its raw bytes, Avro input ({n:,} spans buffered, tracemalloc)",
        f"{per_span:,.0f} B (raw: {raw_per_span:,.0f} B/span)",
    )
    otlp_per_span, otlp_raw, n = memory_per_buffered_span(fmt="otlp_proto")
    t.add_row(
        f"memory per buffered span beyond its raw bytes, OTLP input ({n:,} spans buffered)",
        f"{otlp_per_span:,.0f} B (raw: {otlp_raw:,.0f} B/span)",
    )
    console.print(t)
    print(
        f"BENCH floor_spans_per_s={f_rate:.0f} pipeline_spans_per_s={eos['rate']:.0f} ratio={eos['rate'] / f_rate:.3f} "
        f"at_least_once_spans_per_s={alo['rate']:.0f} buffered_span_bytes={per_span:.0f} "
        f"buffered_span_bytes_otlp={otlp_per_span:.0f} scale_out_uncapped={two['rate'] / eos['rate']:.2f} "
        f"scale_out_capped={_capped_ratio(runs, args.worker_cpu)}"
    )

    from pipeline.privacy import bench_protect

    console.print("[bold]PII protection[/] (kept traces only; one core, no Kafka):")
    bench_protect(out=lambda line: console.print("  " + line))

    from pipeline.sli_reader import bench_sli

    console.print("[bold]SLI operator[/] (every span, before sampling; one core, no Kafka):")
    bench_sli(out=lambda line: console.print("  " + line))

    from pipeline.simulate.bench import bench_simulate

    console.print("[bold]simulate[/] (tailsift simulate's replay; one core, no Kafka):")
    bench_simulate(out=lambda line: console.print("  " + line))
    return 0
