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
from /metrics until its first message taken, then from its group's committed offsets on the
broker: a scrape costs the job CPU the bench would charge it; the Collector's from its metrics
throughout), and tailsift's CPU per thread (loop thread, librdkafka's threads, helpers;
``--profile PATH`` adds a py-spy profile of the drain); spans per CPU-second = spans ingested after
the first sample that saw the system take input (tailsift: any message, ``tailsift_began``) / CPU
seconds from that sample to the drain end (every trace decided and its kept spans written); wall
spans/s over the same interval; peak RSS = VmHWM. Every wait is bounded: a system that crashes or
stalls is reported as such in the table and the bench moves on. Not part of ``make test``: the
figures depend on the machine.

Each system drains each input ``--repeat`` times (default 3), the systems alternating round by round
in mirrored order (collector, tailsift, tailsift-noprivacy, then the reverse, …) so that the
machine's drift over the run — other work starting or stopping — falls on every system alike. The
table gives per system the median spans per CPU-second of its drains with their min–max, and the
ratio to the Collector from the two medians, with the spread of the per-round ratios (each
tailsift drain against the Collector's drain of the same round). One drain moved ±15–30 % between
runs on this machine; the median of three does not follow one disturbed drain."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    round: int = 0  # which round of the run (``--repeat``) this drain was
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

    def run(self, sample, done, began=None) -> tuple[tuple, tuple, int, object]:
        """``sample()`` → (progress, state); ``done(state)`` → bool; ``began(progress, state)`` →
        whether the system has started on its input (default: progress > 0). Returns the first
        sample that saw it begun (wall, cpu, progress), the drain end (wall, cpu), the peak RSS and
        the last state."""
        while time.monotonic() < self.deadline:
            progress, state = sample()
            now, cpu = time.perf_counter(), cpu_seconds(self.pid)
            if self.first is None and (began(progress, state) if began else progress > 0):
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
        try:
            if not self.ends:
                self.ends = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps}
            committed = self.consumer.committed(self.tps, timeout=10)
        except KafkaException:  # the coordinator moving, a timeout on a busy machine: ask again at the next sample
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


def tailsift_began(spans: float, m: dict | None) -> bool:
    """Whether ``tailsift run`` has started on its input, from its /metrics ``m``: any input message
    taken (``tailsift_messages_total``, any outcome), not only spans ingested — a re-keyed message's
    spans count when its copies are read back, after the transaction that wrote them commits, a
    commit interval or more into the drain. Waiting for spans left the re-keying of everything
    consumed before that out of the CPU measured (seen: an unkeyed drain measured from 60K of its
    180K spans on; its figure moved 57K–88K from drain to drain)."""
    return spans > 0 or (m is not None and any(v for k, v in m.items() if k.startswith("tailsift_messages_total")))


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
                first, last, res.peak_rss, res.metrics = sampler.run(sample_alive, done, tailsift_began)
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


# ------------------------------------------------------------------------------------- rounds
def schedule(systems: list[str], repeat: int) -> list[tuple[int, str]]:
    """(round, system) in the order they run: every system once per round, the order mirrored
    round by round (A B C, C B A, A B C …) — a drift of the machine over the run then weighs on
    every system about alike, where a fixed order would put the same system first each round."""
    out = []
    for rnd in range(repeat):
        order = systems if rnd % 2 == 0 else list(reversed(systems))
        out.extend((rnd, s) for s in order)
    return out


@dataclass
class Summary:
    """One system's drains of one input over the rounds of a run."""

    system: str
    variant: str
    runs: list[Result] = field(default_factory=list)  # in round order

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.runs if not r.error]

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.runs if r.error]

    @property
    def per_cpu(self) -> float:
        """The median of the drains' spans per CPU-second (0: none drained)."""
        return statistics.median(r.per_cpu for r in self.ok) if self.ok else 0.0

    @property
    def spread(self) -> tuple[float, float]:
        ok = [r.per_cpu for r in self.ok]
        return (min(ok), max(ok)) if ok else (0.0, 0.0)

    @property
    def per_wall(self) -> float:
        return statistics.median(r.per_wall for r in self.ok) if self.ok else 0.0

    @property
    def peak_rss(self) -> int:
        return max((r.peak_rss for r in self.ok), default=0)

    @property
    def median_run(self) -> Result | None:
        """The drain whose spans per CPU-second is the median (the lower of the middle two for an
        even count): its kept traces, CPU by thread and notes are the ones printed."""
        ok = sorted(self.ok, key=lambda r: r.per_cpu)
        return ok[(len(ok) - 1) // 2] if ok else None

    def ratio(self, base: Summary) -> float:
        """Median against median; 0 when either has no drain."""
        return self.per_cpu / base.per_cpu if self.ok and base.ok else 0.0

    def round_ratios(self, base: Summary) -> list[float]:
        """Per round where both drained: this system's drain against ``base``'s of the same round."""
        theirs = {r.round: r for r in base.ok}
        return [r.per_cpu / theirs[r.round].per_cpu for r in self.ok if r.round in theirs]


def summarize(results: list[Result]) -> list[Summary]:
    """The drains of a run, one ``Summary`` per (system, input) in the order first run, each
    summary's drains in round order."""
    out: dict[tuple[str, str], Summary] = {}
    for r in results:
        out.setdefault((r.system, r.variant), Summary(r.system, r.variant)).runs.append(r)
    for s in out.values():
        s.runs.sort(key=lambda r: r.round)
    return list(out.values())


# ------------------------------------------------------------------------------------- report
def _k(x: float) -> str:
    return f"{x / 1000:,.1f}K"


def render(console: Console, summaries: list[Summary], traffic: dict[str, Traffic], pinning: str, repeat: int) -> None:
    t = Table(
        title=f"tailsift vs the OpenTelemetry Collector's tail_sampling ({pinning}; "
        f"{repeat} drain{'s' if repeat != 1 else ''} each, alternating)"
    )
    for col in (
        "system",
        "input",
        "spans/CPU-s",
        "min–max",
        "wall spans/s",
        "peak RSS",
        "kept / decided",
        "kept spans out",
        "ratio (rounds)",
    ):
        t.add_column(col, justify="left" if col in ("system", "input") else "right")
    collector = {s.variant: s for s in summaries if s.system.startswith("Collector")}
    for s in summaries:
        mid = s.median_run
        if mid is None:
            # the whole message is in the BENCH-PEER line below the table
            err = s.failed[-1]
            crash = err.error if len(err.error) <= 60 else err.error[:59] + "…"
            t.add_row(s.system, s.variant, f"[red]{crash}[/]", "", "", "", f"{err.kept_traces:,} / {err.decided:,}")
            continue
        base = collector.get(s.variant)
        if base is s:
            ratio = "1"
        elif base is None or not base.ok:
            ratio = "n/a"
        else:
            rounds = s.round_ratios(base)
            ratio = f"{s.ratio(base):.2f}×"
            if len(rounds) > 1:
                ratio += f" ({min(rounds):.2f}–{max(rounds):.2f})"
        lo, hi = s.spread
        failed = f" [red]+{len(s.failed)} failed[/]" if s.failed else ""
        t.add_row(
            s.system,
            s.variant,
            f"{s.per_cpu:,.0f}",
            f"{_k(lo)}–{_k(hi)}{failed}",
            f"{s.per_wall:,.0f}",
            f"{s.peak_rss / 2**20:,.0f} MiB",
            f"{mid.kept_traces:,} / {mid.decided:,}",
            f"{mid.kept_spans_out:,}",
            ratio,
        )
    console.print(t)
    console.print(
        "  spans/CPU-s: the median of the drains (min–max over them); ratio per CPU-second: median "
        "against the Collector's median, in brackets the range of the per-round ratios (each drain "
        "against the Collector's drain of the same round); kept traces / decided, kept spans out and "
        "CPU by thread: the median drain's — kept spans out: the Collector's exporter sent spans, "
        "tailsift's kept spans at decision time (late spans of a kept trace follow it and are not "
        "counted there)"
    )
    for s in summaries:
        for i, r in enumerate(s.runs):
            if r.note:
                console.print(f"  note: {s.system}, {s.variant}, drain {i + 1}: {r.note}")
            if r.error:
                console.print(f"  [red]failed[/]: {s.system}, {s.variant}, drain {i + 1}: {r.error}")
    for s in summaries:
        mid = s.median_run
        if mid is not None and mid.threads:
            console.print(f"  {s.system}, {s.variant}: CPU by thread over the median drain ({mid.cpu_s:.2f} s)")
            for line in render_threads(mid.threads, mid.cpu_s, mid.spans):
                console.print(line, highlight=False)
    for v, tr in traffic.items():
        console.print(
            f"  {v}: {tr.traces:,} traces, {tr.spans:,} spans in {len(tr.messages):,} messages "
            f"({tr.bytes / 1e6:,.1f} MB), {len(tr.error_traces):,} with errors, {len(tr.slow_traces):,} slow"
        )
    for s in summaries:
        if not s.ok:
            status = "ERROR " + s.failed[-1].error
        else:
            lo, hi = s.spread
            base = collector.get(s.variant)
            ratio = f" ratio={s.ratio(base):.3f}" if base is not None and base is not s and base.ok else ""
            status = (
                f"per_cpu={s.per_cpu:.0f} min={lo:.0f} max={hi:.0f} drains={len(s.ok)} failed={len(s.failed)}"
                f" wall={s.per_wall:.0f} rss={s.peak_rss}{ratio}"
            )
        print(f"BENCH-PEER system={s.system!r} input={s.variant} {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.peerbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20_000, help="normal traces (plus --big-traces)")
    parser.add_argument("--big-traces", type=int, default=2, help="5,000-span traces in the input (the first errs)")
    parser.add_argument("--big-trace-spans", type=int, default=5_000)
    parser.add_argument("--variants", default="keyed,unkeyed", help="comma list of keyed, unkeyed")
    parser.add_argument("--systems", default="collector,tailsift,tailsift-noprivacy")
    parser.add_argument(
        "--repeat", type=int, default=3, help="drains per system and input, alternating; the median is reported"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds one system may take to drain")
    parser.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting deploy/local/kafka")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="PATH",
        help="py-spy record each tailsift drain to PATH (.json: speedscope, else raw collapsed stacks); "
        "the system, variant and drain number are added to the name",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    console = Console(width=None if sys.stdout.isatty() else 160)

    systems = args.systems.split(",")
    binary = None
    if "collector" in systems:
        console.print("building / locating the Collector (deploy/otelcol/build) …")
        binary = otelcol.build()
    results: list[Result] = []
    started = time.monotonic()
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
            for rnd, system in schedule(systems, args.repeat):
                console.print(
                    f"[bold]{variant}[/] {rnd + 1}/{args.repeat}: {system} … ({time.monotonic() - started:.0f} s)"
                )
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
                        name = f"{args.profile.stem}.{system}.{variant}.{rnd + 1}{args.profile.suffix}"
                        profile = args.profile.with_name(name)
                    r = run_tailsift(bootstrap, tr, tmp, system == "tailsift", cpus, args.timeout, profile)
                r.variant, r.round = variant, rnd
                figures = (
                    f"{r.per_cpu:,.0f} spans/CPU-s ({r.spans:,} spans measured, {r.cpu_s:.2f} CPU-s), "
                    f"{r.per_wall:,.0f} spans/s wall"
                )
                if r.threads:  # the drain's own split: librdkafka's share moves most between drains
                    figures += " — " + ", ".join(f"{name} {s:.2f} s" for name, s in r.threads.most_common(3))
                console.print(f"  {r.error or figures}")
                results.append(r)
    console.print(f"{len(results)} drains in {time.monotonic() - started:.0f} s")
    summaries = summarize(results)
    render(console, summaries, {v: traffic[v] for v in args.variants.split(",")}, pinning, args.repeat)
    return 0 if all(not r.error for r in results) else 1
