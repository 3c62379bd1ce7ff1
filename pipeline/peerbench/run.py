"""``make bench-peer``: tailsift against the OpenTelemetry Collector's own tail sampling, in one run.

The same OTLP protobuf input (``traffic.py``: keyed one trace per message, and the Collector's
unkeyed ~200-span multi-trace default) is pre-filled into a fresh topic per run and drained by

- the pinned Collector (``deploy/otelcol/bench-peer.yaml``: kafka receiver → tail_sampling
  [status_code ERROR, latency >= 500 ms, probabilistic 5 %, decision_wait 1 s] → batch → kafka
  exporter), and
- ``tailsift run`` with the same policies and decision wait (``ingest.format: otlp_proto``,
  exactly_once), with privacy on (the default) and off,

each pinned to one core (``taskset``) while the broker and this process share the other. Each run
samples the system's progress and /proc CPU time (utime + stime) every 0.25 s (tailsift's progress
from /metrics until its first span, then from its group's committed offsets on the broker: a
scrape costs the job CPU the bench would charge it; the Collector's from its metrics throughout),
and tailsift's CPU per thread (loop thread, librdkafka's threads, helpers; ``--profile PATH`` adds
a py-spy profile of the drain); spans per CPU-second
= spans ingested after the first sample that saw any / CPU seconds from that sample to the drain
end (every trace decided and its kept spans written); wall spans/s over the same interval; peak RSS
= VmHWM. Every wait is bounded: a system that crashes or stalls is reported as such in the table
and the bench moves on. Not part of ``make test``: the figures depend on the machine."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from pipeline import otelcol
from pipeline.bench import cpu_seconds
from pipeline.demo import delete_topics, ensure_token_key, free_port, run_config
from pipeline.jobproc import JobError, JobProcess
from pipeline.kafka import clients
from pipeline.kafka.partitioner import sarama_partition
from pipeline.localkafka import broker
from pipeline.peerbench.threads import PySpy, split, thread_cpu
from pipeline.peerbench.threads import render as render_threads
from pipeline.peerbench.traffic import Traffic, generate
from pipeline.topics import create_topics

REPO = Path(__file__).resolve().parents[2]
COLLECTOR_CONFIG = REPO / "deploy" / "otelcol" / "bench-peer.yaml"
PARTITIONS = 6
POLICIES = [
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
    {"name": "slow", "type": "latency", "threshold_ms": 500},
    {"name": "baseline", "type": "probabilistic", "sampling_percentage": 5},
]
SAMPLE_S = 0.25


class RunFailed(Exception):
    """The system crashed or stalled: the bench reports it and goes on."""


@dataclass
class Result:
    system: str
    variant: str
    spans: int = 0  # spans measured (ingested after the first sample)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss: int = 0  # bytes
    kept_traces: int = 0
    decided: int = 0
    kept_spans_out: int = 0  # kept spans written to the output topic
    error: str = ""
    note: str = ""
    threads: Counter = field(default_factory=Counter)  # CPU seconds per thread name (tailsift)
    metrics: dict = field(default_factory=dict)  # tailsift's /metrics at the drain end

    @property
    def per_cpu(self) -> float:
        return self.spans / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def per_wall(self) -> float:
        return self.spans / self.wall_s if self.wall_s > 0 else 0.0


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class _Sampler:
    """Progress and CPU of one process, sampled until ``done`` says the drain is over."""

    def __init__(self, pid: int, timeout: float, profile: PySpy | None = None):
        self.pid = pid
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.first: tuple[float, float, float] | None = None  # (wall, cpu, progress)
        self.profile = profile
        self.threads_first: dict = {}
        self.threads_seen: dict = {}  # (tid, name) → CPU at the last sample that saw it alive
        self.threads: Counter = Counter()  # CPU seconds per thread name over the drain

    def run(self, sample, done) -> tuple[tuple, tuple, int, object]:
        """``sample()`` → (progress, state); ``done(state)`` → bool. Returns the first sample that saw
        progress (wall, cpu, progress), the drain end (wall, cpu), the peak RSS and the last state."""
        while time.monotonic() < self.deadline:
            progress, state = sample()
            now, cpu = time.perf_counter(), cpu_seconds(self.pid)
            if self.first is None and progress > 0:
                self.first = (now, cpu, progress)
                self.threads_first = thread_cpu(self.pid)
                if self.profile is not None:
                    self.profile.start(self.pid)
            if self.first is not None:
                # short-lived threads (a helper per commit, an HTTP handler per scrape) are counted
                # up to the last sample that saw them
                self.threads_seen.update(thread_cpu(self.pid))
            if self.first is not None and done(state):
                self.threads = split(self.threads_first, self.threads_seen)
                if self.profile is not None:
                    self.profile.stop()
                return self.first, (now, cpu), peak_rss(self.pid), state
            time.sleep(SAMPLE_S)
        raise RunFailed(f"stalled: not drained in {self.timeout:.0f} s")


def _measured(result: Result, total_spans: int, first, last) -> None:
    result.spans = int(total_spans - first[2])
    result.wall_s = last[0] - first[0]
    result.cpu_s = last[1] - first[1]
    if result.spans <= 0 or result.cpu_s <= 0 or result.wall_s <= 0:
        # everything went through between two samples: no interval to divide by
        raise RunFailed(
            f"too little input to measure ({total_spans:,} spans drained within one sample): raise --traces"
        )


def pin(pid: int, cpus: str) -> bool:
    """Pin a running process and every thread it has (the broker's JVM) to ``cpus``."""
    return subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True).returncode == 0


def broker_pid() -> int | None:
    state = Path(os.environ.get("TAILSIFT_KAFKA_DIR") or REPO / ".kafka")
    try:
        return int((state / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient(clients.connection(bootstrap))  # held until the result: its handle serves the future
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(30)


def delete_topic_names(bootstrap: str, topics: list[str]) -> None:
    admin = AdminClient(clients.connection(bootstrap))
    for fut in admin.delete_topics(topics).values():
        try:
            fut.result(30)
        except Exception:  # noqa: BLE001 - best-effort clean-up
            pass


def prefill(bootstrap: str, topic: str, traffic: Traffic) -> None:
    """Write every message of ``traffic`` to ``topic`` (which exists) and wait until all are on the broker."""
    p = Producer(
        {
            **clients.connection(bootstrap),
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.kbytes": 512 * 1024,
            "message.max.bytes": 2_000_000,
        }
    )
    # keyed messages where the Collector's kafka exporter puts them (hex key, Sarama FNV-1a hash);
    # unkeyed ones anywhere, as its sticky partitioner does
    deadline = time.monotonic() + 60
    n = 0
    while not n:  # a topic just created shows no partitions until the metadata propagates
        n = len(p.list_topics(topic, timeout=30).topics[topic].partitions)
        if not n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic}: no partitions in the metadata after 60 s")
            time.sleep(0.2)
    failed: list = []
    for i, (key, value) in enumerate(traffic.messages):
        partition = sarama_partition(key, n) if key is not None else (i // 50) % n
        while True:
            try:
                p.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=partition,
                    on_delivery=lambda err, _m: err and failed.append(err),
                )
                break
            except BufferError:
                p.poll(0.5)
        p.poll(0)
    if p.flush(120) or failed:
        raise RuntimeError(f"pre-fill of {topic} failed: {failed[:3]}")


# ------------------------------------------------------------------------------- the Collector
def run_collector(binary: Path, bootstrap: str, topic: str, traffic: Traffic, tmp: Path, cpus, timeout) -> Result:
    res = Result("Collector tail_sampling", "")
    out_topic = f"{topic}.kept"
    create_topic(bootstrap, out_topic)
    env = {
        "KAFKA_BROKERS": bootstrap,
        "OTELCOL_GROUP_ID": f"{topic}-otelcol",
        "BENCH_INPUT_TOPIC": topic,
        "BENCH_OUTPUT_TOPIC": out_topic,
        "OTELCOL_METRICS_PORT": str(free_port()),
    }
    col = otelcol.CollectorProcess(
        binary, COLLECTOR_CONFIG, tmp / f"{topic}.otelcol.log", int(env["OTELCOL_METRICS_PORT"]), env, cpus
    )
    col.start()
    try:
        stable = {"sent": -1.0, "since": 0.0}

        def sample():
            col.check_alive()
            try:
                m = col.metrics()
            except OSError:
                return 0, None
            accepted = otelcol.metric_sum(m, "otelcol_receiver_accepted_spans_total", receiver="kafka")
            return accepted, m

        def done(m) -> bool:
            if m is None:
                return False
            decided = otelcol.metric_sum(m, "otelcol_processor_tail_sampling_global_count_traces_sampled_total")
            kept = otelcol.metric_sum(
                m, "otelcol_processor_tail_sampling_global_count_traces_sampled_total", sampled="true"
            )
            failed = otelcol.metric_sum(m, "otelcol_exporter_send_failed_spans_total", exporter="kafka")
            res.kept_spans_out = int(otelcol.metric_sum(m, "otelcol_exporter_sent_spans_total", exporter="kafka"))
            # written or given up on (the exporter drops a record over its 1 MB max_message_bytes)
            sent = res.kept_spans_out + failed
            now = time.monotonic()
            if sent != stable["sent"]:
                stable.update(sent=sent, since=now)
            res.decided, res.kept_traces = int(decided), int(kept)
            res.note = f"{failed:,.0f} kept spans failed to export" if failed else ""
            # every trace decided and the exporter quiet for 1 s (batch timeout 200 ms): all written
            return decided >= traffic.traces and sent > 0 and now - stable["since"] >= 1.0

        first, last, res.peak_rss, _ = _Sampler(col.pid, timeout).run(sample, done)
        # the quiet second that proved the drain is not part of it
        _measured(res, traffic.spans, first, (last[0] - 1.0, last[1]))
    except (otelcol.CollectorError, RunFailed) as exc:
        res.error = str(exc).splitlines()[0]
    finally:
        col.stop()
    return res


# ------------------------------------------------------------------------------------ tailsift
class _PinnedJob(JobProcess):
    def __init__(self, *args, cpus: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpus = cpus

    def start(self) -> _PinnedJob:
        argv = [sys.executable, "-m", "pipeline.cli", "run", "-c", self.config_path]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]  # taskset execs: the pid is the job's
        self._spawn(argv, REPO)
        return self


def _exception_line(log: Path) -> str:
    """The last line of the job log that names an exception (what a crash was), else its last line."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    named = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (named or lines or ["(empty log)"])[-1].strip()[:200]


class _CommittedOffsets:
    """Whether a consumer group's committed offsets have reached the end of every partition of its
    (pre-filled) input — for tailsift, drained: a worker commits a partition's oldest message whose
    trace is not decided and written yet. Read from the broker, so watching the drain costs the job
    no CPU; a /metrics scrape of its ~400 series costs it ~4 ms, and scraping 4 times a second was
    ~12 % of the CPU this bench charged it (a Prometheus server scrapes every 15–60 s)."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        self.consumer = Consumer(
            {
                **clients.connection(bootstrap),
                "group.id": group,  # never subscribes: reads the group's offsets, never joins it
                "enable.auto.commit": False,
                # read_committed would ask for stable offsets, refused while a transaction is open
                "isolation.level": "read_uncommitted",
            }
        )
        n = len(self.consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        self.tps = [TopicPartition(topic, p) for p in range(n)]
        self.ends: dict[int, int] = {}

    def drained(self) -> bool:
        if not self.ends:
            self.ends = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps}
        try:
            committed = self.consumer.committed(self.tps, timeout=10)
        except KafkaException:  # e.g. the coordinator moving: ask again at the next sample
            return False
        return all(tp.offset >= self.ends[tp.partition] for tp in committed)

    def close(self) -> None:
        self.consumer.close()


def tailsift_config(bootstrap: str, run_id: str, tmp: Path, privacy: bool):
    workdir = tmp / run_id
    workdir.mkdir()
    return run_config(
        bootstrap,
        run_id,
        workdir,
        # behind a Collector: its placement of keyed traffic is canonical (README "Partitioning")
        ingest={"format": "otlp_proto", "rekey": True, "partitioning": "collector"},
        emit={"format": "otlp_proto"},
        assemble={"decision_wait_ms": 1000},
        sampling={"policies": POLICIES},
        sli={"window_seconds": 10, "grace_seconds": 1},
        privacy={"enabled": privacy},
    )


def run_tailsift(
    bootstrap: str, traffic: Traffic, tmp: Path, privacy: bool, cpus, timeout, profile: Path | None = None
) -> Result:
    res = Result(f"tailsift, privacy {'on' if privacy else 'off'}", "")
    run_id = f"peer-{uuid.uuid4().hex[:6]}"
    path, cfg = tailsift_config(bootstrap, run_id, tmp, privacy)
    create_topics(cfg)
    try:
        prefill(bootstrap, cfg.topics.spans_raw.name, traffic)
        job = _PinnedJob(path, cfg.metrics.port, tmp / f"{run_id}.log", cpus=cpus).start()
        try:
            sampler = _Sampler(job.proc.pid, timeout, PySpy(profile) if profile else None)
            watch = _CommittedOffsets(bootstrap, cfg.kafka.group_id, cfg.topics.spans_raw.name)

            def sample():
                # /metrics until the first span is in, then the group's committed offsets (read
                # from the broker: no CPU of the job's) until they reach the end of the input, then
                # /metrics again for the decision counts
                if sampler.first is not None and not watch.drained():
                    return 1, None
                try:
                    m = job.metrics()
                except OSError:
                    job._check_alive()
                    return 0, None
                return m.get("tailsift_spans_ingested_total", 0), m

            def done(m) -> bool:
                if m is None:
                    return False
                decided = sum(v for k, v in m.items() if k.startswith("tailsift_traces_decided_total"))
                res.decided = int(decided)
                res.kept_spans_out = int(m.get("tailsift_kept_spans_total", 0))
                res.kept_traces = int(
                    sum(
                        v
                        for k, v in m.items()
                        if k.startswith("tailsift_traces_decided_total") and "decision=keep" in k
                    )
                )
                return (
                    m.get("tailsift_spans_ingested_total", 0) >= traffic.spans
                    and decided >= traffic.traces
                    and m.get("tailsift_traces_in_memory", 1) == 0
                    and m.get("tailsift_uncommitted_messages", 1) == 0
                )

            def sample_alive():
                job._check_alive()
                return sample()

            try:
                first, last, res.peak_rss, res.metrics = sampler.run(sample_alive, done)
            finally:
                watch.close()
                if sampler.profile is not None:
                    sampler.profile.stop()
            _measured(res, traffic.spans, first, last)
            res.threads = sampler.threads
        except (JobError, RunFailed) as exc:
            res.error = str(exc).splitlines()[0].removesuffix("; log tail:")
            res.error += f" — {_exception_line(job.log_path)}"
            kept_log = Path(tempfile.gettempdir()) / f"tailsift-bench-peer-{run_id}.log"
            shutil.copy(job.log_path, kept_log)
            res.note = f"job log kept in {kept_log}"
        finally:
            job.stop()
    finally:
        delete_topics(cfg)
    return res


# ------------------------------------------------------------------------------------- report
def render(console: Console, results: list[Result], traffic: dict[str, Traffic], pinning: str) -> None:
    t = Table(title=f"tailsift vs the OpenTelemetry Collector's tail_sampling ({pinning})")
    for col in (
        "system",
        "input",
        "spans/CPU-s",
        "wall spans/s",
        "peak RSS",
        "kept traces / decided",
        "kept spans out",
        "ratio per CPU-s",
    ):
        t.add_column(col, justify="left" if col in ("system", "input") else "right")
    collector = {r.variant: r for r in results if r.system.startswith("Collector") and not r.error}
    for r in results:
        if r.error:
            # the whole message is in the BENCH-PEER line below the table
            crash = r.error if len(r.error) <= 60 else r.error[:59] + "…"
            t.add_row(r.system, r.variant, f"[red]{crash}[/]", "", "", f"{r.kept_traces:,} / {r.decided:,}", "", "")
            continue
        base = collector.get(r.variant)
        ratio = f"{r.per_cpu / base.per_cpu:.2f}×" if base and base is not r else ("1" if base is r else "n/a")
        t.add_row(
            r.system,
            r.variant,
            f"{r.per_cpu:,.0f}",
            f"{r.per_wall:,.0f}",
            f"{r.peak_rss / 2**20:,.0f} MiB",
            f"{r.kept_traces:,} / {r.decided:,}",
            f"{r.kept_spans_out:,}",
            ratio,
        )
    console.print(t)
    console.print(
        "  kept spans out: the Collector's exporter sent spans; tailsift's kept spans at decision time "
        "(late spans of a kept trace follow it and are not counted there)"
    )
    for r in results:
        if r.note:
            console.print(f"  note: {r.system}, {r.variant}: {r.note}")
    for r in results:
        if r.threads and not r.error:
            console.print(f"  {r.system}, {r.variant}: CPU by thread over the drain ({r.cpu_s:.2f} s)")
            for line in render_threads(r.threads, r.cpu_s, r.spans):
                console.print(line, highlight=False)
    for v, tr in traffic.items():
        console.print(
            f"  {v}: {tr.traces:,} traces, {tr.spans:,} spans in {len(tr.messages):,} messages "
            f"({tr.bytes / 1e6:,.1f} MB), {len(tr.error_traces):,} with errors, {len(tr.slow_traces):,} slow"
        )
    for r in results:
        status = "ERROR " + r.error if r.error else f"per_cpu={r.per_cpu:.0f} wall={r.per_wall:.0f} rss={r.peak_rss}"
        print(f"BENCH-PEER system={r.system!r} input={r.variant} {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.peerbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20_000, help="normal traces (plus --big-traces)")
    parser.add_argument("--big-traces", type=int, default=2, help="5,000-span traces in the input (the first errs)")
    parser.add_argument("--big-trace-spans", type=int, default=5_000)
    parser.add_argument("--variants", default="keyed,unkeyed", help="comma list of keyed, unkeyed")
    parser.add_argument("--systems", default="collector,tailsift,tailsift-noprivacy")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one system may take to drain")
    parser.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting deploy/local/kafka")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="PATH",
        help="py-spy record each tailsift drain to PATH (.json: speedscope, else raw collapsed stacks); "
        "the system and variant are added to the name",
    )
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)

    systems = args.systems.split(",")
    binary = None
    if "collector" in systems:
        console.print("building / locating the Collector (deploy/otelcol/build) …")
        binary = otelcol.build()
    results: list[Result] = []
    # a free port unless told otherwise: another broker (another checkout's) may hold 9092
    os.environ.setdefault("KAFKA_PORT", "0")
    with broker(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory(prefix="tailsift-peer-") as tmp_s:
        tmp = Path(tmp_s)
        ensure_token_key(console)
        cpus = None
        pinning = "not pinned: fewer than 2 cores"
        if (os.cpu_count() or 1) >= 2:
            cpus = "1"
            os.sched_setaffinity(0, {0})  # this process (producer, scrapes) beside the broker
            pid = None if args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else broker_pid()
            broker_pinned = pid is not None and pin(pid, "0")
            pinning = "system on core 1, " + ("broker and bench on core 0" if broker_pinned else "bench on core 0")
        console.print(f"generating {args.traces:,} traces + {args.big_traces} × {args.big_trace_spans:,} spans …")
        keyed, unkeyed = generate(
            args.traces, start_ns=time.time_ns(), big_traces=args.big_traces, big_trace_spans=args.big_trace_spans
        )
        traffic = {"keyed": keyed, "unkeyed": unkeyed}
        for variant in args.variants.split(","):
            tr = traffic[variant]
            for system in systems:
                console.print(f"[bold]{variant}[/]: {system} …")
                if system == "collector":
                    topic = f"peer-{uuid.uuid4().hex[:6]}.{variant}"
                    create_topic(bootstrap, topic)
                    try:
                        prefill(bootstrap, topic, tr)
                        r = run_collector(binary, bootstrap, topic, tr, tmp, cpus, args.timeout)
                    finally:
                        delete_topic_names(bootstrap, [topic, f"{topic}.kept"])
                else:
                    profile = None
                    if args.profile is not None:
                        profile = args.profile.with_name(f"{args.profile.stem}.{system}.{variant}{args.profile.suffix}")
                    r = run_tailsift(bootstrap, tr, tmp, system == "tailsift", cpus, args.timeout, profile)
                r.variant = variant
                console.print(f"  {r.error or f'{r.per_cpu:,.0f} spans/CPU-s, {r.per_wall:,.0f} spans/s wall'}")
                results.append(r)
    render(console, results, {v: traffic[v] for v in args.variants.split(",")}, pinning)
    return 0 if all(not r.error for r in results) else 1
