"""The chaos suite's exactness figures as a scenario prints them (``scenarios._exactness``), with the
topics' contents given: a missed error trace decided at the buffer bound is shown apart and not
judged, any other is judged — and the topics are read only once no worker can commit between
the reads."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from pipeline import config
from pipeline.chaos import misses, scenarios, verify
from pipeline.chaos.figures import ScenarioResult
from pipeline.chaos.fleet import Fleet, Worker
from pipeline.chaos.truth import Send, Truth

S = 1_000_000_000
T0 = 1_800_000_000 * S
TID = b"\x05" * 16
HOME = 2


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self):
        return self.returncode


class _Job:
    """A worker process that commits until it is stopped."""

    def __init__(self, pid: int) -> None:
        self.proc = _Proc(pid)

    def resume(self) -> None:
        pass

    def stop(self, timeout: float = 30.0) -> int:
        self.proc.returncode = 0
        return 0

    def metrics(self) -> dict[str, float]:
        return {"tailsift_decision_points_total{trigger=backlog_bound}": 3.0}  # as pipeline.report.scrape keys it


class _Fleet:
    """What ``_exactness`` asks of a fleet, with ``Fleet``'s own way of stopping its workers."""

    stop_workers = Fleet.stop_workers

    def __init__(self, tmp_path) -> None:
        self.cfg = config.parse({"assemble": {"decision_wait_ms": 6500}})
        self.bootstrap = "127.0.0.1:1"
        self.workdir = tmp_path
        self.input_topic = self.cfg.topics.spans_raw.name
        self.workers = []
        for i in range(2):
            w = Worker(f"w{i}", tmp_path / "c.yaml", 0, tmp_path / f"w{i}.log", {})
            w.job = _Job(100 + i)
            self.workers.append(w)


def _error_trace(truth: Truth) -> None:
    spans = [
        {"span_id": bytes([1]) * 8, "name": "GET /a", "kind": "SERVER", "status_code": "UNSET"},
        {"span_id": bytes([2]) * 8, "name": "db", "kind": "CLIENT", "status_code": "ERROR"},
    ]
    truth.add_batches(TID, [{"service": "svc", "spans": spans[:1]}, {"service": "svc", "spans": spans[1:]}])
    created_ms = T0 // 1_000_000
    truth.sends[TID] = [
        Send(False, False, False, T0, HOME, 10, created_ms, T0 + S // 10, b"a" * 8),
        Send(True, False, False, T0, HOME, 11, created_ms + 500, T0 + 6 * S // 10, b"b" * 8),
    ]


def _run(monkeypatch, tmp_path, trigger: str) -> tuple[ScenarioResult, list[bool]]:
    """``_exactness`` over one error trace decided drop with ``trigger``; returns the result and,
    per topic read, whether any worker was still running then."""
    truth = Truth()
    _error_trace(truth)
    fleet = _Fleet(tmp_path)
    running: list[bool] = []

    def reading(result):
        def read(*args, **kwargs):
            running.append(any(w.alive() for w in fleet.workers))
            return result

        return read

    record = {
        "trace_id": TID,
        "keep": False,
        "policy": "",
        "reason": "not_sampled",
        "probability": 1.0,
        "decided_at_unix_nano": T0 + 12 * S,
        "input_partition": HOME,
        "trigger": trigger,
    }
    monkeypatch.setattr(verify, "kept_span_occurrences", reading(Counter()))
    monkeypatch.setattr(verify, "decision_log", reading({TID: [record]}))
    monkeypatch.setattr(verify, "sli_counts", reading((Counter(truth.sli_spans), Counter(truth.sli_errors))))
    monkeypatch.setattr(verify, "dead_letters", reading([]))
    monkeypatch.setattr(misses, "copies", reading({}))
    monkeypatch.setattr(misses, "aborted", reading({}))
    res = ScenarioResult("overload")
    scenarios._exactness(res, fleet, truth, poison_judged=False)
    return res, running


def figures(res: ScenarioResult) -> dict:
    return {f.name: f for f in res.figures}


BUFFER_LINE = (
    "error traces dropped at the buffer bound before their error was read (stated fallback, README 'Bounded memory')"
)


@pytest.mark.parametrize("trigger", ["backlog_bound", "memory_bound"])
def test_an_error_trace_dropped_at_the_buffer_bound_is_shown_not_judged(monkeypatch, tmp_path, trigger):
    """The overload run (2026-11-29) exited 1 on 8 such traces: "error traces not kept" 8. Now the
    decision record's trigger puts them on a line of their own."""
    res, _ = _run(monkeypatch, tmp_path, trigger)
    f = figures(res)
    assert f["error traces not kept"].value == 0 and f["error traces not kept"].ok
    assert f[BUFFER_LINE].value == 1
    assert f[f"  not kept, why: {misses.EXCUSED['buffer']}"].value == 1
    assert [m.name for m in res.missed] == ["traces kept"]  # the one trace here is not kept


@pytest.mark.parametrize("trigger", ["decision_wait", "backlog_read", ""])
def test_an_error_trace_dropped_anywhere_else_fails_the_scenario(monkeypatch, tmp_path, trigger):
    """A drop by the clock wait, by the read progress, or by a record that does not say: the job's
    miss ("" is a record written before the trigger existed, and no other excuse shows here)."""
    res, _ = _run(monkeypatch, tmp_path, trigger)
    f = figures(res)
    assert f["error traces not kept"].value == 1 and not f["error traces not kept"].ok
    assert f[BUFFER_LINE].value == 0
    assert [m.name for m in res.missed] == ["traces kept", "error traces not kept"]


def test_the_topics_are_read_only_once_every_worker_stopped(monkeypatch, tmp_path):
    """Before, the workers ran on while ``verify.check`` read traces.kept and then the decision
    log: the overload run whose drain stalled showed 13 traces with a keep decision and nothing in
    traces.kept — keeps committed between the two reads. Now every worker is stopped first (its
    decision points scraped before it goes)."""
    fleet_probe: list = []
    original = Fleet.stop_workers

    def stop_workers(self):
        fleet_probe.append(self)
        original(self)

    monkeypatch.setattr(_Fleet, "stop_workers", stop_workers)
    _, running = _run(monkeypatch, tmp_path, "decision_wait")
    assert running and not any(running)
    (fleet,) = fleet_probe
    assert all(w.triggers == {100 + i: {"backlog_bound": 3.0}} for i, w in enumerate(fleet.workers))


def test_check_counts_each_excuse_on_its_own_line(monkeypatch, tmp_path):
    """``verify.check`` itself: the buffer-bound drop leaves "error traces not kept" and its
    "decided drop" share, and is counted once under ``error_buffer_dropped``."""
    truth = Truth()
    _error_trace(truth)
    record = {"trace_id": TID, "keep": False, "policy": "", "probability": 1.0, "reason": "not_sampled"}
    record |= {"decided_at_unix_nano": T0 + 12 * S, "input_partition": HOME, "trigger": "backlog_bound"}
    monkeypatch.setattr(verify, "kept_span_occurrences", lambda *a, **k: Counter())
    monkeypatch.setattr(verify, "decision_log", lambda *a, **k: {TID: [record]})
    monkeypatch.setattr(verify, "sli_counts", lambda *a, **k: (Counter(truth.sli_spans), Counter(truth.sli_errors)))
    monkeypatch.setattr(verify, "dead_letters", lambda *a, **k: [])
    monkeypatch.setattr(misses, "copies", lambda *a, **k: {})
    topics = config.parse({}).topics
    ex = verify.check("127.0.0.1:1", topics, truth, hard_bound_ns=65 * S, owners=SimpleNamespace(since=lambda *a: None))
    assert (ex.error_traces_not_kept, ex.error_traces_decided_drop, ex.error_buffer_dropped) == (0, 0, 1)
    assert ex.excused == {TID: "buffer"} and ex.error_bound_dropped == 0 and ex.error_held_dropped == 0
