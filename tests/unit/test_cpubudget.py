"""``make bench``'s scale-out with a CPU budget per worker (issue 11: two workers ≥ 1.7× one). On
2 cores an uncapped worker takes one core and the broker and the bench the other, so the old
figure (two workers 1.36× one, each as fast per span as one alone) measured the machine's spare
cores, not the job. The bench now also runs one and two workers with the same CFS quota each, as
Kubernetes CPU limits deploy them: ``pipeline.cpubudget`` finds a writable cgroup hierarchy (v1
``cpu.cfs_quota_us`` or v2 ``cpu.max``), says why not where there is none, and removes what it made,
also when the run fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import bench, cpubudget


def _v1(mount: Path) -> Path:
    (mount / "cpu").mkdir(parents=True)
    (mount / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    return mount / "cpu"


def _v2(root: Path, controllers: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    return root


def test_finds_the_v1_cpu_controller(tmp_path):
    v1 = _v1(tmp_path)
    assert cpubudget.find(tmp_path) == cpubudget.Hierarchy(1, v1)


def test_finds_a_v2_hierarchy_with_the_cpu_controller(tmp_path):
    v2 = _v2(tmp_path, "cpuset cpu io memory pids")
    assert cpubudget.find(tmp_path) == cpubudget.Hierarchy(2, v2)


def test_a_hybrid_hosts_unified_tree_without_cpu_is_not_used_and_says_why(tmp_path):
    _v2(tmp_path / "unified", "hugetlb")
    found = cpubudget.find(tmp_path)
    assert isinstance(found, str)
    assert f"no cgroup v1 cpu controller at {tmp_path / 'cpu'}" in found
    assert f"cgroup v2 at {tmp_path / 'unified'} has no cpu controller" in found


def test_no_hierarchy_at_all_says_why(tmp_path):
    assert cpubudget.find(tmp_path) == (
        f"no cgroup v1 cpu controller at {tmp_path / 'cpu'}; no cgroup v2 hierarchy at {tmp_path}"
    )


def test_a_v1_budget_writes_its_period_and_quota(tmp_path):
    budget = cpubudget.CpuBudget(cpubudget.Hierarchy(1, _v1(tmp_path)), "w0", 0.5)
    assert (budget.path / "cpu.cfs_period_us").read_text() == "100000"
    assert (budget.path / "cpu.cfs_quota_us").read_text() == "50000"


def test_a_v2_budget_enables_the_cpu_controller_and_writes_cpu_max(tmp_path):
    root = _v2(tmp_path, "cpu memory")
    budget = cpubudget.CpuBudget(cpubudget.Hierarchy(2, root), "w0", 0.25)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (budget.path / "cpu.max").read_text() == "25000 100000"


def test_a_budget_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        cpubudget.CpuBudget(cpubudget.Hierarchy(1, _v1(tmp_path)), "w0", 0)
    assert not (tmp_path / "cpu" / "w0").exists()


REAL = cpubudget.usable()


@pytest.mark.skipif(isinstance(REAL, str), reason=f"no writable cgroup cpu controller here: {REAL}")
def test_real_budgets_hold_their_processes_and_are_removed_even_when_the_run_fails():
    assert isinstance(REAL, cpubudget.Hierarchy)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    paths = []
    try:
        with pytest.raises(RuntimeError, match="the run failed"):
            with cpubudget.budgets(REAL, 2, 0.25, f"tailsift-test-{child.pid}") as made:
                paths = [b.path for b in made]
                quota = "cpu.cfs_quota_us" if REAL.version == 1 else "cpu.max"
                assert [(p / quota).read_text().split()[0] for p in paths] == ["25000", "25000"]
                made[1].add(child.pid)
                assert made[1].pids() == [child.pid]
                assert made[0].pids() == []
                assert made[1].throttled_s() >= 0
                raise RuntimeError("the run failed")
        assert len(paths) == 2
        assert not any(p.exists() for p in paths)
        assert child.poll() is None  # moved out, not killed
        assert str(child.pid) in (REAL.root / "cgroup.procs").read_text().split()
    finally:
        child.kill()
        child.wait()


def test_the_bench_says_not_measured_and_why_when_it_cannot_cap():
    assert bench.budget_plan(0.5, "no cgroup v1 cpu controller at /x") == (None, "no cgroup v1 cpu controller at /x")
    assert bench.budget_plan(0, cpubudget.Hierarchy(1, Path("/x"))) == (None, "--worker-cpu 0")
    label, value = bench.scale_out_row({}, 0.5, "no cgroup v1 cpu controller at /x", None)
    assert "0.5 core each" in label
    assert value == "not measured: no cgroup v1 cpu controller at /x"


def test_the_bench_reports_the_capped_scale_out_from_the_same_run():
    run = {"cpu_per_span": 25e-6, "cpu_share": 0.5, "throttled": 3.0}
    runs = {
        "exactly_once, 1 worker, 0.5 core": {**run, "rate": 20_000.0},
        "exactly_once, 2 workers, 0.5 core each": {**run, "rate": 38_000.0},
    }
    label, value = bench.scale_out_row(runs, 0.5, "", 1)
    assert label.endswith("cgroup v1")
    assert value.startswith("38,000 vs 20,000 spans/s = 1.90×")
