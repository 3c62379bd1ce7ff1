"""pipeline.kafka.shutdown: a stop signal ends the process within its grace even when the main
thread never returns to the interpreter, and SIGUSR1 shows every thread's stack.

Run in a child process (the guard installs signal handlers and may end its process). The child
blocks its main thread in a read that is retried after each signal (PEP 475) — like a librdkafka
call that waits on: the Python handler runs, sets its flag, and the thread goes back to waiting.

Before: the worker's SIGTERM handler only set a flag the loop checks between steps. A worker
held in a librdkafka call (a transaction waiting on a broker that is away, then an abort retried
for 300 s) ignored SIGTERM for minutes: in the chaos suite's short profile a worker stayed alive,
holding its partitions, until the harness's SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import logging, os, sys
    from pipeline.kafka.shutdown import ShutdownGuard
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    stops = []
    ShutdownGuard(stops.append, grace_s=float(sys.argv[1]), signal_exit_code=4).install()
    r, w = os.pipe()
    print("ready", flush=True)
    os.read(r, 1)  # blocks for good: no one writes
    """
)


def start(grace_s: float, stderr_path) -> subprocess.Popen:  # noqa: ANN001
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(grace_s)],
        stdout=subprocess.PIPE,
        stderr=open(stderr_path, "w"),  # noqa: SIM115 - the child owns it
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def wait_until(cond, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_ends_a_process_whose_main_thread_stays_blocked(tmp_path):
    err = tmp_path / "stderr"
    proc = start(1.0, err)
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)  # without the guard: never (the read goes on after the handler)
    finally:
        proc.kill()
    log = err.read_text()
    assert code == 4
    _, stacks = log.split("still running 1 s after it was told to stop: exiting 4 now", 1)
    assert 'File "<string>", line 9 in <module>' in stacks  # where the main thread was held


def test_sigusr1_writes_every_threads_stack_and_the_process_goes_on(tmp_path):
    err = tmp_path / "stderr"
    proc = start(60.0, err)
    try:
        proc.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: 'File "<string>"' in err.read_text())
        assert proc.poll() is None  # still running
        assert "told to stop" not in err.read_text()
        assert "_watch_signals" in err.read_text()  # every thread, not only the main one
    finally:
        proc.kill()
        proc.wait(10)
