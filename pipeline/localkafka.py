"""Find or start the Kafka that demo/bench use: ``--bootstrap``, else KAFKA_BOOTSTRAP_SERVERS, else
the project's local broker (``deploy/local/kafka``), which is stopped again if this run started it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[1] / "deploy" / "local" / "kafka"


class BrokerError(Exception):
    pass


def _launcher(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # This interpreter, so the launcher's readiness check can use confluent_kafka.
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextmanager
def broker(bootstrap: str | None = None) -> Iterator[str]:
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield bootstrap
        return
    was_running = _launcher("status").returncode == 0
    started = _launcher("start")
    if started.returncode != 0:
        raise BrokerError(f"deploy/local/kafka start failed:\n{started.stdout}\n{started.stderr}")
    address = started.stdout.strip().splitlines()[-1]
    try:
        yield address
    finally:
        if not was_running:
            _launcher("stop")
