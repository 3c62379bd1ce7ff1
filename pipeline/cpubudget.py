"""A CPU budget per benched worker, as it is deployed: Kubernetes gives each worker a CPU limit,
which the kernel enforces as a CFS quota on the worker's cgroup. ``make bench`` measures one worker
against two with the same budget each, so the scale-out figure says what a second worker adds
instead of how many idle cores the machine had (on 2 cores an uncapped worker takes one, the
broker and the bench the other, and a second worker has nowhere to run).

cgroup v1 (``<root>/cpu/<name>/cpu.cfs_quota_us``) and v2 (``<root>/<name>/cpu.max``) are both
handled; where neither is writable, ``find`` says why and the bench prints "not measured"."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000  # the kernel's default CFS period, and Kubernetes'


@dataclass(frozen=True)
class Hierarchy:
    """A writable cgroup directory whose children can carry a CPU quota."""

    version: int  # 1 or 2
    root: Path


def find(mount: Path = Path("/sys/fs/cgroup")) -> Hierarchy | str:
    """The writable cgroup hierarchy with a cpu controller under ``mount``, or the reason there is
    none (one clause per place looked at)."""
    reasons = []
    v1 = mount / "cpu"
    if (v1 / "cpu.cfs_quota_us").is_file():
        if os.access(v1, os.W_OK):
            return Hierarchy(1, v1)
        reasons.append(f"{v1} is not writable (not root, or mounted read-only)")
    else:
        reasons.append(f"no cgroup v1 cpu controller at {v1}")
    # v2: the unified mount itself, or beside v1 on a hybrid host
    v2_mounts = [v2 for v2 in (mount, mount / "unified") if (v2 / "cgroup.controllers").is_file()]
    if not v2_mounts:
        reasons.append(f"no cgroup v2 hierarchy at {mount}")
    for v2 in v2_mounts:
        controllers = v2 / "cgroup.controllers"
        if "cpu" not in controllers.read_text().split():
            reasons.append(f"cgroup v2 at {v2} has no cpu controller (it is bound to v1, or not delegated)")
            continue
        if not os.access(v2, os.W_OK):
            reasons.append(f"{v2} is not writable (not root, or mounted read-only)")
            continue
        return Hierarchy(2, v2)
    return "; ".join(reasons)


class CpuBudget:
    """One cgroup holding at most ``cores`` CPUs (``cores × period`` of CPU time per CFS period)."""

    def __init__(self, hierarchy: Hierarchy, name: str, cores: float, period_us: int = PERIOD_US):
        if cores <= 0:
            raise ValueError(f"a CPU budget must be positive, not {cores}")
        self.hierarchy = hierarchy
        self.cores = cores
        self.path = hierarchy.root / name
        quota = max(1_000, round(cores * period_us))  # the kernel's minimum quota is 1 ms
        if hierarchy.version == 2:
            self._enable_cpu_controller()
        self.path.mkdir()
        try:
            if hierarchy.version == 1:
                # the period first: a quota above the old period's bound would be refused otherwise
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (self.path / "cpu.max").write_text(f"{quota} {period_us}")
        except BaseException:
            self.remove()
            raise

    def _enable_cpu_controller(self) -> None:
        control = self.hierarchy.root / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")

    def add(self, pid: int) -> None:
        """Move a process (every thread of it) into the budget; threads it starts later stay in it."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    def throttled_s(self) -> float:
        """Seconds the budget's processes were held back by the quota so far (``cpu.stat``)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        if "throttled_usec" in stat:  # v2
            return int(stat["throttled_usec"]) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9  # v1: ns

    def remove(self, timeout: float = 10.0) -> None:
        """Move what is still inside back to the hierarchy's root and delete the cgroup."""
        if not self.path.exists():
            return
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    (self.hierarchy.root / "cgroup.procs").write_text(str(pid))
            try:
                self.path.rmdir()
                return
            except OSError as e:
                # EBUSY: a process that just exited is still listed for a moment
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def usable(mount: Path = Path("/sys/fs/cgroup")) -> Hierarchy | str:
    """``find``, then a throw-away budget made and removed in it: a hierarchy that looks writable
    may still refuse a child or its quota (a v2 parent with processes of its own, a container's
    read-only delegation). The hierarchy, or why budgets cannot be made here."""
    found = find(mount)
    if isinstance(found, str):
        return found
    try:
        CpuBudget(found, f"tailsift-probe-{os.getpid()}", 0.5).remove()
    except OSError as e:
        return f"cannot make a cgroup with a CPU quota in {found.root}: {e}"
    return found


@contextlib.contextmanager
def budgets(hierarchy: Hierarchy, count: int, cores: float, prefix: str) -> Iterator[list[CpuBudget]]:
    """``count`` budgets of ``cores`` each, named ``<prefix>-<i>``; all removed on the way out,
    also when the block (or creating one of them) fails."""
    made: list[CpuBudget] = []
    try:
        for i in range(count):
            made.append(CpuBudget(hierarchy, f"{prefix}-{i}", cores))
        yield made
    finally:
        errors = []
        for budget in made:
            try:
                budget.remove()
            except OSError as e:
                errors.append(f"{budget.path}: {e}")
        if errors:
            raise OSError("CPU budget cgroups left behind: " + "; ".join(errors))
