"""Run ``tailsift aggregate`` as a child process (demo and integration tests): its own process, as
deployed, so a test can kill -9 it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class AggregateError(Exception):
    pass


class AggregateProcess:
    def __init__(self, config_path: str | os.PathLike, host: str, port: int, log_path: str | os.PathLike):
        self.config_path = str(config_path)
        self.url = f"http://{host}:{port}"
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> AggregateProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "aggregate", "-c", self.config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
        log.close()
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AggregateError(f"tailsift aggregate exited (code {code}); log tail:\n{self.log_tail()}")

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

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: no shutdown hooks, no final commit, the open transactions left behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
