"""The pinned OpenTelemetry Collector (``deploy/otelcol/``) as a child process: built on demand by
``deploy/otelcol/build`` (cached per version), started with a YAML config, watched through its own
Prometheus telemetry. ``make bench-peer`` and the interop tests use it; the job never does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.childproc import ChildProcess
from pipeline.report import scrape

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "deploy" / "otelcol" / "build"
CONFIG_DIR = REPO / "deploy" / "otelcol"


class CollectorError(Exception):
    pass


def build(timeout: float = 1800) -> Path:
    """The Collector binary, built first if the cache does not hold the manifest's build.
    Raises CollectorError with the build output when it cannot be built (e.g. no Go toolchain)."""
    try:
        done = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CollectorError(f"deploy/otelcol/build did not finish in {timeout:.0f} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not Path(lines[-1]).exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-30:])
        raise CollectorError(f"deploy/otelcol/build failed (exit {done.returncode}):\n{tail}")
    return Path(lines[-1])


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (as ``pipeline.report.scrape`` keys them) carrying every ``labels`` pair."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for k, v in metrics.items() if k.split("{")[0] == name and all(w in k for w in want))


class CollectorProcess(ChildProcess):
    """One Collector run: ``start()``, ``metrics()`` from its telemetry endpoint, ``stop()``.
    ``cpus`` pins it (``taskset -c``; taskset execs, so the pid is the Collector's own); ``env``
    fills the config's ``${env:…}`` references."""

    what = "the Collector"
    error = CollectorError

    def __init__(
        self,
        binary: Path,
        config: Path,
        log_path: Path,
        metrics_port: int | None = None,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
        extra_configs: list[str] | None = None,
    ):
        super().__init__(log_path, env)
        self.binary = binary
        self.config = config
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
        self.cpus = cpus
        # more --config URIs, merged over ``config`` in order (e.g. "yaml:exporters::file::path: x")
        self.extra_configs = list(extra_configs or [])

    def start(self) -> CollectorProcess:
        argv = [str(self.binary), f"--config={self.config}", *(f"--config={c}" for c in self.extra_configs)]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]
        self._spawn(argv)
        return self

    def metrics(self) -> dict[str, float]:
        if not self.metrics_url:
            raise CollectorError("this Collector was started without a telemetry port")
        return scrape(self.metrics_url)
