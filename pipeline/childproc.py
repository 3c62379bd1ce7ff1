"""A program the tools run beside the job as a child process — a worker (``tailsift run``), the
aggregation stage, a Collector — with its output in a log file: start, watch, stop, kill -9,
freeze. One implementation for the demo, the benches, the chaos suite and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class ChildProcess:
    """Subclasses name themselves (``what``) and the exception they raise (``error``)."""

    what = "the child process"
    error: type[Exception] = RuntimeError

    def __init__(self, log_path: str | os.PathLike, env: dict | None = None):
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], cwd: str | os.PathLike | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=cwd
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise self.error(f"{self.what} exited (code {code}); log tail:\n{self.log_tail()}")

    _check_alive = check_alive  # the name the job's callers used first

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: no shutdown hooks, no final commit, open transactions left behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def suspend(self) -> None:
        """SIGSTOP: alive but silent, as in a long GC pause or a frozen VM (a zombie to be)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
