"""Run ``tailsift aggregate`` as a child process (demo and integration tests): its own process, as
deployed, so a test can kill -9 it."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.childproc import ChildProcess


class AggregateError(Exception):
    pass


class AggregateProcess(ChildProcess):
    what = "tailsift aggregate"
    error = AggregateError

    def __init__(self, config_path: str | os.PathLike, host: str, port: int, log_path: str | os.PathLike):
        super().__init__(log_path)
        self.config_path = str(config_path)
        self.url = f"http://{host}:{port}"

    def start(self) -> AggregateProcess:
        argv = [sys.executable, "-m", "pipeline.cli", "aggregate", "-c", self.config_path]
        self._spawn(argv, Path(__file__).resolve().parents[2])
        return self

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def health(self) -> dict | None:
        """/healthz when it answers 200 (recovered, assigned), else None."""
        try:
            return self.get("/healthz")
        except OSError:  # not listening yet, or 503 while recovering
            return None

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            h = self.health()
            if h is not None and h.get("partitions"):
                return h
            time.sleep(0.5)
        raise AggregateError(f"aggregate stage not ready after {timeout}s; log tail:\n{self.log_tail()}")

    def wait_idle(self, partials: int = 1, timeout: float = 120.0) -> dict:
        """Until at least ``partials`` partials were read (since this process started) and no
        window is open: every merged window emitted."""
        deadline = time.monotonic() + timeout
        h: dict | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            h = self.health()
            if h is not None and h.get("open_windows") == 0 and h["counts"]["partials"] >= partials:
                return h
            time.sleep(0.5)
        raise AggregateError(f"windows still open after {timeout}s ({h}); log tail:\n{self.log_tail()}")
