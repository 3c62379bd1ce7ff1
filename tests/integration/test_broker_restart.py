"""Two workers across a broker killed mid-stream and started again (issue 13): a worker told to
stop while the broker is gone ends within its grace, saying it did not finish; the other one
rides out the outage and drains everything after the restart — restarted by its supervisor if it
exits 3 — every kept span exactly once, kept traces whole, SLI counts exact; then it stops cleanly
on SIGTERM.

Before: the worker that rode out the outage hung in this test as in the chaos suite:
``send_offsets_to_transaction(..., 60)`` never returned after the restart (py-spy --native:
``pthread_cond_wait`` in ``rd_kafka_txn_op_req0``; librdkafka 2.16 does not enforce that timeout
when its cached group coordinator is gone), its partitions held, nothing drained. And SIGTERM only
set a flag the loop checks between steps while librdkafka held the loop thread for minutes with
the broker away (that call, then an abort retried for up to 300 s): the stopped worker was still
alive when this test gave up on it — in the chaos suite the harness SIGKILLed such workers."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from pipeline.chaos.fleet import Broker
from pipeline.jobproc import JobProcess
from pipeline.kafka.worker import EXIT_FATAL, EXIT_UNFINISHED
from tests.integration.outputs import assert_kept_exactly_once_and_whole, assert_sli_exact, committed_to_end
from tests.integration.test_assembly_e2e import (  # noqa: F401 - jobs is a fixture
    jobs,
    make_env,
    start_job,
    wait_for,
    wait_group_members,
)
from tests.integration.test_data_plane import ASSEMBLE, SLI, finish, generate, in_background

pytestmark = pytest.mark.integration

# far beyond the worker's 15 s grace, far below what the old worker took with the broker away
STOP_BOUND_S = 120


def stopped_within(job, bound_s: float) -> int | None:
    """SIGTERM, then the exit code — None if still running after ``bound_s``."""
    job.proc.send_signal(signal.SIGTERM)
    try:
        return job.proc.wait(bound_s)
    except subprocess.TimeoutExpired:
        return None


def restart(started: list, path, cfg, log) -> JobProcess:  # noqa: ANN001
    """As a supervisor does: start it again, without waiting for anything (the drain judges)."""
    job = JobProcess(path, cfg.metrics.port, log).start()
    started.append(job)  # stopped at teardown
    return job


def drain_supervised(job, cfg, restart, timeout: float = 600.0, max_restarts: int = 2):
    """Until the group committed all input and the worker holds nothing, restarting it as its
    supervisor would when it exits 3 (fatal: e.g. its transaction cannot be aborted after the
    outage — the broker answers INVALID_TXN_STATE — so the producer is unusable)."""
    deadline = time.monotonic() + timeout
    restarts = 0
    while time.monotonic() < deadline:
        if job.proc.poll() is not None:
            assert job.proc.returncode == EXIT_FATAL and restarts < max_restarts, job.log_tail(30)
            restarts += 1
            job = restart(restarts)
        elif committed_to_end(cfg):
            job.wait_idle(timeout=300)
            return job
        time.sleep(1.0)
    raise AssertionError(f"not drained within {timeout:.0f} s; log tail:\n{job.log_tail(30)}")


def test_a_worker_stops_within_its_grace_with_the_broker_gone_and_the_other_drains_after_the_restart(
    local_kafka,
    unique_name,
    tmp_path,
    jobs,  # noqa: F811
):
    if local_kafka.instance_dir is None:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS is an external cluster: this test cannot restart it")
    run_id = f"br-{unique_name}"
    path_a, cfg = make_env(local_kafka.bootstrap, run_id, tmp_path / "a", assemble=ASSEMBLE, sli=SLI)
    path_b, cfg_b = make_env(local_kafka.bootstrap, run_id, tmp_path / "b", create=False, assemble=ASSEMBLE, sli=SLI)
    a = start_job(jobs, path_a, cfg, tmp_path / "a.log")
    b = start_job(jobs, path_b, cfg_b, tmp_path / "b.log")
    wait_group_members(cfg, 2)
    traces: list = []
    # ~25 s of traffic; the broker goes away in the middle of it (the generator's producer holds
    # what it cannot deliver and sends it after the restart)
    thread, result = in_background(lambda: generate(cfg, traces, count=2_500, rate=100, seed=41))
    wait_for(
        lambda: all(j.metric("tailsift_flush_seconds_count") > 0 for j in (a, b)),
        "both workers to commit a transaction of outputs",
        job=a,
    )
    assert thread.is_alive(), "the generator finished before the broker was killed: not mid-stream"

    broker = Broker(local_kafka.bootstrap, local_kafka.instance_dir)
    broker.stop(kill=True)
    try:
        code = stopped_within(a, STOP_BOUND_S)
    finally:
        broker.start()
    assert code == EXIT_UNFINISHED, f"exit {code}; log tail:\n{a.log_tail(30)}"
    log_a = (tmp_path / "a.log").read_text(errors="replace")
    _, stacks = log_a.split("after it was told to stop: exiting 4 now", 1)
    assert "(most recent call first)" in stacks  # where it was held, for whoever reads the log

    stats = finish(thread, result)
    b = drain_supervised(b, cfg, lambda n: restart(jobs, path_b, cfg_b, tmp_path / f"b{n}.log"))
    assert sum(t.span_count for t in traces) == stats.spans
    # an error trace may be decided before its error spans come back from the outage (decision
    # points run on the worker's clock; another issue): judged here is what nothing may break
    assert_kept_exactly_once_and_whole(cfg, traces, min_errors=50, errors_kept=False)
    assert_sli_exact(cfg, traces)
    assert stopped_within(b, STOP_BOUND_S) == 0, b.log_tail(30)
