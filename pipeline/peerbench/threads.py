"""Where a process's CPU goes, by thread: the job's loop thread (Python), librdkafka's own threads
(``rdk:main``, ``rdk:broker…``), the /metrics server, helpers — from ``/proc/PID/task/*/stat``, and
optionally a py-spy profile of the same interval (``--profile``), which splits the loop thread's
share between the job core and the loop around it.

Read at the start and at the end of the drain the bench times; the difference per thread name is
the split of the CPU the bench divides the spans by."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
# librdkafka names a thread per broker connection (rdk:broker1, rdk:broker-1, rdk:broker1001): one group
_NUMBERED = re.compile(r"[-\d]+$")


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """(tid, name) → utime + stime seconds of each live thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended between the listing and the read
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[(int(task.name), name)] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def split(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]) -> Counter:
    """CPU seconds spent between two ``thread_cpu`` readings, per thread name (numbered librdkafka
    broker threads summed as one). A thread that ended in between is not counted (its time is in
    the process's total only): pass in ``after`` every thread seen along the way."""
    spent: Counter = Counter()
    for (tid, name), cpu in after.items():
        spent[_NUMBERED.sub("", name) if name.startswith("rdk:") else name] += cpu - before.get((tid, name), 0.0)
    return spent


def render(spent: Counter, total_s: float, spans: int) -> list[str]:
    """Lines: each thread's CPU seconds, share of the process's total and µs per span."""
    lines = []
    for name, cpu in spent.most_common():
        if cpu <= 0:
            continue
        lines.append(f"    {name:<18} {cpu:7.2f} s  {100 * cpu / total_s:5.1f} %  {1e6 * cpu / spans:6.1f} µs/span")
    rest = total_s - sum(spent.values())
    if abs(rest) >= 0.01:
        lines.append(f"    {'(not attributed)':<18} {rest:7.2f} s  {100 * rest / total_s:5.1f} %")
    return lines


class PySpy:
    """``py-spy record`` of a process from ``start()`` to ``stop()``: raw (collapsed) stacks, which
    ``flamegraph.pl`` or speedscope read; the loop thread's samples split the job core from the loop."""

    def __init__(self, out: Path, rate: int = 100):
        self.out = out
        self.rate = rate
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self, pid: int) -> None:
        exe = Path(sys.executable).with_name("py-spy")
        binary = str(exe) if exe.exists() else shutil.which("py-spy")
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        fmt = "speedscope" if self.out.suffix == ".json" else "raw"
        self.proc = subprocess.Popen(
            # --nonblocking: py-spy stopping the process for every sample woke librdkafka's threads
            # (10× their CPU); --gil: only the thread running Python (a blocked read or select of
            # a helper thread is otherwise sampled as busy)
            [binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", fmt, "-o", str(self.out)]
            + ["--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
