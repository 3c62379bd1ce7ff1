"""Run ``tailsift run`` as a child process and watch it: demo, bench and integration tests use it,
so they exercise the job exactly as it is deployed (its own process, its own consumer group
member), and can kill -9 it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from pipeline.childproc import ChildProcess
from pipeline.kafka import clients
from pipeline.report import scrape

_DRAIN_METRICS = (
    "tailsift_spans_ingested_total",
    "tailsift_sli_open_windows",
    "tailsift_uncommitted_messages",
    "tailsift_input_lag_messages",
)


class JobError(Exception):
    pass


class JobProcess(ChildProcess):
    what = "tailsift run"
    error = JobError

    def __init__(
        self, config_path: str | os.PathLike, metrics_port: int, log_path: str | os.PathLike, env: dict | None = None
    ):
        super().__init__(log_path, env)
        self.config_path = str(config_path)
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def start(self) -> JobProcess:
        argv = [sys.executable, "-m", "pipeline.cli", "run", "-c", self.config_path]
        self._spawn(argv, Path(__file__).resolve().parents[1])
        return self

    def wait_ready(self, bootstrap: str, group: str, timeout: float = 90.0, members: int = 1) -> None:
        """Until the job's consumer group is Stable with at least ``members`` members holding
        partitions and /metrics answers. (With ``members=1`` a group of several workers is "ready"
        as soon as the first one holds every partition — the others' joins rebalance it later.)"""
        admin = AdminClient(clients.connection(bootstrap))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                desc = admin.describe_consumer_groups([group])[group].result(10)
                holding = sum(1 for m in desc.members if m.assignment.topic_partitions)
                if desc.state == ConsumerGroupState.STABLE and holding >= members:
                    self.metrics()
                    return
            except Exception:  # noqa: BLE001 - group not there yet, metrics not up yet
                pass
            time.sleep(0.5)
        raise JobError(f"job not ready after {timeout}s; log tail:\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_url)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples, optionally only those carrying ``labels``."""
        want = [f"{k}={v}" for k, v in labels.items()]
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == name and all(w in k for w in want))

    def wait_idle(self, timeout: float = 120.0) -> dict[str, float]:
        """Until nothing is buffered, no window is open and every received offset is released."""
        return self.wait_drained(0, timeout)

    def wait_drained(self, expected_spans: int, timeout: float = 120.0) -> dict[str, float]:
        """Until every expected span was ingested, decided, windowed and its offset released."""
        deadline = time.monotonic() + timeout
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                m = self.metrics()
            except OSError:  # the process may be exiting: the next _check_alive says why
                time.sleep(0.25)
                continue
            if (
                m.get("tailsift_spans_ingested_total", 0) >= expected_spans
                and m.get("tailsift_traces_in_memory", 1) == 0
                and m.get("tailsift_sli_open_windows", 1) == 0
                and m.get("tailsift_uncommitted_messages", 1) == 0
                and m.get("tailsift_input_lag_messages", 0) == 0
            ):
                return m
            time.sleep(0.25)
        # every metric the condition reads (a failure that hid the one still short could not be told apart)
        shown = {k: v for k, v in m.items() if k.startswith(_DRAIN_METRICS) or "memory" in k}
        raise JobError(
            f"job did not drain {expected_spans} spans in {timeout}s (last metrics: {shown}); "
            f"log tail:\n{self.log_tail()}"
        )
