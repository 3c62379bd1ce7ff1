"""The processes a scenario drives: the broker (stop, kill -9, start again) and a group of
``tailsift run`` workers (start, kill -9, restart, freeze, thaw), plus a sampler thread that
records each worker's peak RSS (/proc) and the group's lag (committed offsets vs. end offsets)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.chaos.verify import group_lag
from pipeline.demo import run_config
from pipeline.jobproc import JobProcess
from pipeline.kafka import clients
from pipeline.localkafka import LAUNCHER
from pipeline.topics import topics_not_ready

MAX_REVIVES = 4  # per worker: a crash loop is a finding, not something to wait out
_TRIGGER = "tailsift_decision_points_total{trigger="


def _triggers(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len(_TRIGGER) : -1]: v for k, v in metrics.items() if k.startswith(_TRIGGER)}


class Broker:
    """The local broker instance in ``instance_dir`` (None: an external cluster, not restartable)."""

    def __init__(self, bootstrap: str, instance_dir: str | Path | None):
        self.bootstrap = bootstrap
        self.instance_dir = Path(instance_dir) if instance_dir else None

    @property
    def restartable(self) -> bool:
        return self.instance_dir is not None

    def _cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PORT")}
        return subprocess.run(
            [sys.executable, str(LAUNCHER), *args, "--dir", str(self.instance_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def stop(self, kill: bool = False) -> None:
        r = self._cli("stop", *(["--kill"] if kill else []))
        if r.returncode != 0:
            raise RuntimeError(f"broker stop failed: {r.stderr}")

    def start(self) -> None:
        # --port 0 reuses the instance's previous port when free: clients reconnect to the same address
        # a broker recovering its logs on a loaded 2-core machine takes far longer than a fresh one
        r = self._cli("start", "--port", "0", "--timeout", "300", timeout=360)
        if r.returncode != 0:
            raise RuntimeError(f"broker start failed: {r.stderr}")
        address = r.stdout.strip().splitlines()[-1]
        if address != self.bootstrap:
            raise RuntimeError(f"broker came back on {address}, not {self.bootstrap} (port taken meanwhile)")


def wait_topics(bootstrap: str, wanted: dict[str, int], timeout: float = 60, admin=None) -> None:
    """Until the cluster metadata shows every wanted topic with all its partitions led."""
    from confluent_kafka.admin import AdminClient

    admin = admin or AdminClient(clients.connection(bootstrap))
    deadline = time.monotonic() + timeout
    lacking = ["(not asked yet)"]
    while time.monotonic() < deadline:
        try:
            lacking = topics_not_ready(admin.list_topics(timeout=10), wanted)
        except Exception as exc:  # noqa: BLE001 - KafkaException: the broker did not answer in time
            lacking = [f"metadata request failed: {exc}"]
        if not lacking:
            return
        time.sleep(0.2)
    raise TimeoutError(f"new topics not in the cluster metadata within {timeout:.0f} s: {'; '.join(lacking)}")


@dataclass
class Worker:
    name: str
    config_path: Path
    metrics_port: int
    log_path: Path
    env: dict
    job: JobProcess | None = None
    pids: list[int] = field(default_factory=list)
    peak_rss: int = 0  # bytes, over every incarnation
    starts: int = 0
    planned_kills: int = 0
    unplanned_exits: int = 0
    exit_codes: list[int] = field(default_factory=list)  # of each unplanned exit, in order
    started_at: float = 0.0
    # (wall-clock ns, "start" | "kill" | "exit"): when each incarnation began and ended, for the
    # classification of missed error traces (pipeline.chaos.misses)
    events: list[tuple[int, str]] = field(default_factory=list)
    # pid → decision points per trigger, as last scraped (a killed incarnation keeps its last reading)
    triggers: dict[int, dict[str, float]] = field(default_factory=dict)

    def start(self) -> None:
        self.job = JobProcess(self.config_path, self.metrics_port, self.log_path, env=self.env).start()
        self.pids.append(self.job.proc.pid)
        self.starts += 1
        self.started_at = time.monotonic()
        self.events.append((time.time_ns(), "start"))

    def alive(self) -> bool:
        return self.job is not None and self.job.proc is not None and self.job.proc.poll() is None

    def rss(self) -> int:
        """Resident set of the live process now (VmRSS); 0 when not running."""
        if not self.alive():
            return 0
        try:
            for line in Path(f"/proc/{self.job.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0


class Fleet:
    """N workers of one consumer group over one run's topics (``pipeline.demo.run_config``)."""

    def __init__(self, bootstrap: str, run_id: str, workdir: Path, n: int, env: dict | None = None, **overrides):
        from pipeline.topics import create_topics

        self.bootstrap = bootstrap
        self.workdir = workdir
        self.workers: list[Worker] = []
        self.cfg = None
        for i in range(n):
            wdir = workdir / f"w{i}"
            wdir.mkdir(parents=True, exist_ok=True)
            path, cfg = run_config(bootstrap, run_id, wdir, **overrides)
            if self.cfg is None:
                self.cfg = cfg
                bad = [r for r in create_topics(cfg) if r.status != "created"]
                if bad:
                    raise RuntimeError(f"topics not created: {bad}")
                # a worker started before the new topics' metadata propagates exits "missing topics"
                wait_topics(bootstrap, {t.name: t.partitions for t in cfg.topics.all().values()})
            self.workers.append(Worker(f"w{i}", path, cfg.metrics.port, workdir / f"w{i}.log", dict(env or {})))
        self.peak_lag = 0
        self.lag = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="chaos-sampler", daemon=True)

    @property
    def group(self) -> str:
        return self.cfg.kafka.group_id

    @property
    def input_topic(self) -> str:
        return self.cfg.topics.spans_raw.name

    def start_all(self, timeout: float = 120) -> None:
        for w in self.workers:
            w.start()
        self.wait_members(len(self.workers), timeout)
        self._sampler.start()

    def wait_members(self, n: int, timeout: float = 120) -> None:
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(clients.connection(self.bootstrap))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for w in self.workers:
                if w.job is not None and not w.alive() and w.job.proc.returncode is not None:
                    raise RuntimeError(f"worker {w.name} exited while starting:\n{w.job.log_tail()}")
            try:
                d = admin.describe_consumer_groups([self.group])[self.group].result(10)
                if d.state == ConsumerGroupState.STABLE and len(d.members) == n:
                    return
            except Exception:  # noqa: BLE001 - group not formed yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} workers did not form a stable group within {timeout:.0f} s")

    def _sample(self) -> None:
        # bounded by the stop event (set in close()); one reading every 0.5 s, triggers every 2 s
        n = 0
        while not self._stop.wait(0.5):
            n += 1
            for w in self.workers:
                w.peak_rss = max(w.peak_rss, w.rss())
                if n % 4 == 0 and w.alive():
                    try:
                        w.triggers[w.job.proc.pid] = _triggers(w.job.metrics())
                    except OSError:
                        pass
            lag = group_lag(self.bootstrap, self.group, self.input_topic, self.cfg.topics.spans_raw.partitions)
            if lag is not None:
                self.lag = lag
                self.peak_lag = max(self.peak_lag, lag)

    def revive(self) -> int:
        """Restart every worker that exited on its own (counted as unplanned); returns how many.
        A worker that keeps dying (a crash loop) is left dead after MAX_REVIVES."""
        n = 0
        for w in self.workers:
            if w.job is not None and not w.alive() and w.unplanned_exits < MAX_REVIVES:
                w.unplanned_exits += 1
                w.exit_codes.append(w.job.proc.returncode)
                w.events.append((time.time_ns(), "exit"))
                w.start()
                n += 1
        return n

    def kill(self, w: Worker) -> None:
        w.job.kill()
        w.events.append((time.time_ns(), "kill"))
        w.planned_kills += 1

    def metric_sum(self, name: str, **labels: str) -> float:
        total = 0.0
        for w in self.workers:
            if w.alive():
                try:
                    total += w.job.metric(name, **labels)
                except OSError:
                    pass
        return total

    def wait_drained(self, timeout: float, stall_s: float = 60.0) -> float:
        """Until the group committed all input and every live worker holds nothing; seconds taken.
        Gives up early when every worker is dead of a crash loop, or the lag has not moved for
        ``stall_s`` (a stalled job: it will not drain by waiting longer)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last_lag, moved_at = None, t0
        while time.monotonic() < deadline:
            self.revive()
            if not any(w.alive() for w in self.workers):
                raise TimeoutError(f"every worker is down (crash loop: exits {self.exits()})")
            lag = group_lag(self.bootstrap, self.group, self.input_topic, self.cfg.topics.spans_raw.partitions)
            if lag == 0 and all(self._idle(w) for w in self.workers if w.alive()):
                return time.monotonic() - t0
            if lag != last_lag:
                last_lag, moved_at = lag, time.monotonic()
            elif time.monotonic() - moved_at > stall_s:
                raise TimeoutError(f"stalled: lag {lag} unchanged for {stall_s:.0f} s")
            time.sleep(0.5)
        raise TimeoutError(f"not drained within {timeout:.0f} s (lag {self.lag})")

    def decision_points(self) -> dict[str, float]:
        """Decision points per trigger summed over every incarnation of every worker, as last
        scraped (up to 2 s of a killed one's are missing; a replayed trace counts again)."""
        out: dict[str, float] = {}
        for w in self.workers:
            for counts in w.triggers.values():
                for k, v in counts.items():
                    out[k] = out.get(k, 0.0) + v
        return out

    def exits(self) -> int:
        return sum(w.unplanned_exits for w in self.workers)

    @staticmethod
    def _idle(w: Worker) -> bool:
        try:
            m = w.job.metrics()
        except OSError:
            return False
        return (
            m.get("tailsift_traces_in_memory", 1) == 0
            and m.get("tailsift_sli_open_windows", 1) == 0
            and m.get("tailsift_uncommitted_messages", 1) == 0
        )

    def logs(self) -> str:
        return "\n".join(w.log_path.read_text(errors="replace") for w in self.workers if w.log_path.exists())

    def stop_workers(self) -> None:
        """Stop every worker (SIGTERM: each commits what it has, or is killed after 20 s), so that
        nothing commits while the topics are read for the figures: the kept traces and the decision
        log, read one after the other while a stalled worker still committed, showed a decision
        whose kept spans came after the first read (13 keep-without-kept traces, overload run of
        2026-11-29). What the scenario asks a worker (/metrics) it asks before."""
        for w in self.workers:
            if w.job is not None:
                w.job.resume()
                if w.alive():  # its decision points to the last (the sampler's reading may be 2 s old)
                    try:
                        w.triggers[w.job.proc.pid] = _triggers(w.job.metrics())
                    except OSError:
                        pass
                w.job.stop(timeout=20)

    def close(self) -> None:
        self._stop.set()
        self.stop_workers()
        if self._sampler.is_alive():
            self._sampler.join(10)

    def delete_topics(self) -> None:
        """The run's topics, once its figures are taken (a lighter broker restarts faster)."""
        from pipeline.demo import delete_topics

        delete_topics(self.cfg)
