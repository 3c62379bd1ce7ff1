"""The five scenarios. Each builds its own run (topics, consumer group, workers), inflicts its
fault, drains, and judges the outcome from the topics against its ground truth.

Every loop is bounded in count and by a deadline; waits are on conditions, polled."""

from __future__ import annotations

import hashlib
import random
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer

from pipeline.chaos import canaries, fuzz, misses, verify
from pipeline.chaos.figures import ScenarioResult
from pipeline.chaos.fleet import Broker, Fleet
from pipeline.chaos.profiles import Profile
from pipeline.chaos.traffic import PRODUCER_CONFIG, Traffic, TrafficPlan
from pipeline.chaos.truth import Truth
from pipeline.config import TopicsConfig
from pipeline.generator.callgraph import on_time_horizon_ms
from pipeline.kafka import clients
from pipeline.kafka.worker import EXIT_FATAL
from pipeline.readback import read_all

# Between a batch's flush time and the worker reading it: the traffic's linger and the worker's
# fetch, far under a second on loopback; a restarted worker re-reads a trace's batches together.
TRANSPORT_SLACK_MS = 1000
# Decide once every span the generator does not make late on purpose has arrived: its on-time
# horizon after the first span, and as long after the root (the root is never the first export
# of a trace with a queue consumer; with a 2 s wait and gap, 15 of 272 error traces of the short
# crash storm were decided drop before their error spans came). The redelivered consumer attempts
# stay late: they follow their trace's decision (kept: a late KeptTrace; dropped: dropped).
_DECIDE_AFTER_MS = int(on_time_horizon_ms() + TRANSPORT_SLACK_MS)
# the traffic mixes misplaced messages in (re-keying): with the default assemble.group_read_time
# (auto) decisions wait for the read time of every partition whose reader re-keys — all of them here
ASSEMBLE = {"decision_wait_ms": _DECIDE_AFTER_MS, "root_quiet_gap_ms": _DECIDE_AFTER_MS}
SLI = {"window_seconds": 2, "grace_seconds": 1}
POLICIES = {
    "policies": [
        {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
        {"name": "baseline", "type": "probabilistic", "sampling_percentage": 10},
    ]
}
ALL = {"policies": [{"name": "all", "type": "always_sample"}]}


@dataclass
class Context:
    bootstrap: str
    broker: Broker
    workdir: Path
    profile: Profile
    say: Callable[[str], None]
    fuzz_skip: tuple[str, ...] = ()  # hostile kinds not sent (to see past one that stalls the job)
    keep_topics: bool = False  # leave each run's topics on the broker, to look into a failure


def _topics(run_id: str, partitions: int) -> dict:
    """run_config's topics with ``partitions`` for the input and the decision log (which mirrors it)."""
    d = TopicsConfig()
    return {
        key: {"name": f"{run_id}.{t.name}", "partitions": partitions}
        for key, t in d.all().items()
        if key in ("spans_raw", "decisions")
    }


def _fleet(ctx: Context, name: str, n: int, partitions: int, env: dict | None = None, **overrides) -> Fleet:
    run_id = f"chaos-{name}-{uuid.uuid4().hex[:6]}"
    overrides.setdefault("assemble", ASSEMBLE)
    overrides.setdefault("sli", SLI)
    overrides.setdefault("sampling", POLICIES)
    overrides.setdefault("emit", {"format": "avro"})
    return Fleet(
        ctx.bootstrap, run_id, ctx.workdir / run_id, n, env=env, topics=_topics(run_id, partitions), **overrides
    )


def _drain(res: ScenarioResult, fleet: Fleet, timeout: float) -> None:
    """Drain, recorded as figures; a drain that fails is a figure too and the checks still run
    on what was committed (they show what the failure cost)."""
    try:
        s = fleet.wait_drained(timeout)
        res.add("drained", 1, "== 1")
        res.add("time to drain s", round(s, 1))
    except TimeoutError as exc:
        res.add("drained", 0, "== 1")
        res.notes.append(f"not drained: {exc}; worker log tail:\n{_log_tail(fleet)}")


def _log_tail(fleet: Fleet, lines: int = 12) -> str:
    for w in fleet.workers:
        if w.unplanned_exits and w.job is not None:
            return w.job.log_tail(lines)
    return fleet.workers[0].job.log_tail(lines) if fleet.workers[0].job else ""


def _cleanup(fleet: Fleet) -> None:
    try:
        fleet.delete_topics()
    except Exception:  # noqa: BLE001 - best effort: the broker may be the thing that failed
        pass


@contextmanager
def _judged(ctx: Context, res: ScenarioResult, fleet: Fleet) -> Iterator[float]:
    """A scenario's run (yields its start time): an exception becomes the scenario's error and the
    suite goes on; the workers are stopped, the topics removed (unless kept) and the duration set."""
    t0 = time.monotonic()
    try:
        yield t0
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's error, the suite goes on
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        fleet.close()
        if not ctx.keep_topics:
            _cleanup(fleet)
        res.seconds = time.monotonic() - t0


def _exactness(
    res: ScenarioResult,
    fleet: Fleet,
    truth: Truth,
    poison_judged: bool = True,
    outages: list[tuple[int, int]] | None = None,
) -> verify.Exactness:
    a = fleet.cfg.assemble
    hard_bound_ns = int(a.backlog_wait_factor * a.decision_wait_ms * 1_000_000)
    # the topics compared are read one after another: nothing may commit between the reads
    fleet.stop_workers()
    owners = misses.Owners(fleet.workers)  # their logs are complete once they stopped
    ex = verify.check(fleet.bootstrap, fleet.cfg.topics, truth, hard_bound_ns=hard_bound_ns, owners=owners)
    res.add("spans produced", ex.spans_produced, "> 0")
    res.add("traces produced", ex.traces_produced)
    res.add("error traces", truth.error_traces, "> 0")
    res.add("traces kept", ex.traces_kept, "> 0")
    res.add("spans lost (of kept traces)", ex.lost, "== 0")
    res.add("kept traces with spans lost", ex.traces_with_loss, "== 0")
    res.add("spans duplicated", ex.duplicated, "== 0")
    res.add("error traces kept incomplete", ex.error_traces_incomplete, "== 0")
    res.add("error traces not kept", ex.error_traces_not_kept, "== 0")
    res.add("  of them decided drop", ex.error_traces_decided_drop)
    res.add("error traces dropped, error only in late spans (expected)", ex.error_late_dropped)
    res.add("error traces dropped, error held by its producer (not promised)", ex.error_held_dropped)
    res.add("error traces dropped at the hard bound, error not read by then (not promised)", ex.error_bound_dropped)
    res.add(
        "error traces dropped at the buffer bound before their error was read"
        " (stated fallback, README 'Bounded memory')",
        ex.error_buffer_dropped,
    )
    if ex.missed:  # why, per trace (pipeline.chaos.misses)
        homes = {r[0]["input_partition"] for tid, r in ex.missed.items() if r and tid not in ex.excused}
        aborted = misses.aborted(fleet.bootstrap, fleet.input_topic, homes)
        found = misses.classify(ex.missed, truth.sends, ex.copies, owners, outages or [], hard_bound_ns, aborted)
        misses.report(found, res, fleet.workdir / "missed-error-traces.txt")
    res.add("spans of dropped traces kept", ex.dropped_leaked, "== 0")
    res.add("kept spans never produced", ex.unknown_kept, "== 0")
    res.add("traces without a decision", ex.decisions_missing, "== 0")
    res.add("traces with >1 decision", ex.decisions_multiple, "== 0")  # records that disagree
    res.add("  decision records rewritten, same verdict", ex.decisions_rewritten)
    res.add("traces with conflicting decisions", ex.decisions_conflicting, "== 0")
    res.add("SLI mismatches (keys)", ex.sli_mismatches, "== 0")
    res.add("SLI span count error", ex.sli_span_delta, "== 0")
    res.add("dead letters", ex.deadletters)
    for reason, n in sorted(ex.deadletter_reasons.items()):
        res.add(f"dead letters: {reason}", n)
    if poison_judged:
        res.add("poison injected", truth.poison_sent)
        res.add("poison not dead-lettered", ex.poison_missing, "== 0")
        res.add("good messages dead-lettered", ex.good_deadlettered, "== 0")
    return ex


def _fleet_figures(res: ScenarioResult, fleet: Fleet, unplanned_limit: str = "", fenced=None) -> None:  # noqa: ANN001
    """``fenced``: a worker whose exit 3 is its fencing (the zombie: README "Guarantees", a fatal
    producer error ends the worker for its supervisor to restart) — shown apart, not judged."""
    res.add("worker restarts (planned kills)", sum(w.planned_kills for w in fleet.workers))
    fenced_exits = fenced.exit_codes.count(EXIT_FATAL) if fenced is not None else 0
    unplanned = sum(w.unplanned_exits for w in fleet.workers) - fenced_exits
    res.add("worker exits (unplanned)", unplanned, unplanned_limit)
    if fenced is not None:
        res.add(f"{fenced.name} exits fenced (exit {EXIT_FATAL}, restarted)", fenced_exits)
    for w in fleet.workers:
        res.add(f"peak RSS MiB {w.name}", round(w.peak_rss / 2**20, 1))
    res.add("peak lag (messages)", fleet.peak_lag)
    points = fleet.decision_points()
    for trigger in ("backlog_limit", "backlog_bound", "memory_bound"):
        res.add(f"decision points: {trigger} (all incarnations)", round(points.get(trigger, 0)))


def _progress(ctx: Context, name: str, t0: float, truth: Truth, fleet: Fleet, extra: str = "") -> None:
    alive = sum(w.alive() for w in fleet.workers)
    ctx.say(
        f"[{name} {time.monotonic() - t0:5.0f}s] produced {truth.spans:,} spans, lag {fleet.lag:,}, "
        f"workers {alive}/{len(fleet.workers)} {extra}"
    )


class _Recoveries:
    """Each restart's time to its first committed transaction, watched while the storm goes on.
    (Measured only once the traffic was done, a restart more than 120 s before that counted as one
    without a first commit: on a loaded machine where the traffic ran 26 min, all 20 did.) A worker
    killed again before its first commit is counted apart: that recovery was cut short, not failed.
    Time the broker was away does not count: no worker can commit then (a restart just before the
    broker's 86 s restart on a loaded machine counted as a recovery without a first commit)."""

    TIMEOUT_S = 120.0
    POLL_S = 1.0

    def __init__(self) -> None:
        # [worker, its start, seconds to first commit or None, cut short, its pid]
        self.items: list[list] = []
        self.outages: list[tuple[float, float]] = []  # (monotonic start, end) the broker was away
        self._next_poll = 0.0

    def started(self, w) -> None:  # noqa: ANN001 - fleet.Worker
        proc = getattr(w.job, "proc", None)
        self.items.append([w, w.started_at, None, False, proc.pid if proc is not None else None])

    def broker_away(self, start: float, end: float) -> None:
        self.outages.append((start, end))

    def _elapsed(self, started: float, now: float) -> float:
        """Seconds from ``started`` to ``now`` with the broker up."""
        away = sum(max(0.0, min(end, now) - max(start, started)) for start, end in self.outages)
        return now - started - away

    def poll(self, now: float, force: bool = False) -> bool:
        """Look at the pending ones (at most once a second unless ``force``); True while any is."""
        if not force and now < self._next_poll:
            return True
        self._next_poll = now + self.POLL_S
        pending = False
        for item in self.items:
            w, started, seconds, cut, _ = item
            if seconds is not None or cut or self._elapsed(started, now) > self.TIMEOUT_S:
                continue
            if w.started_at != started:  # killed and started again before its first commit
                item[3] = True
                continue
            try:
                if w.alive() and w.job.metric("tailsift_flush_seconds_count") > 0:
                    item[2] = self._elapsed(started, now)
                    continue
            except OSError:
                pass
            pending = True
        return pending

    def wait(self) -> None:
        while self.poll(time.monotonic(), force=True):
            time.sleep(0.2)

    def figures(self, res: ScenarioResult, t0: float = 0.0) -> None:
        done = [i[2] for i in self.items if i[2] is not None]
        cut = sum(1 for i in self.items if i[3])
        res.add("recoveries without a first commit", len(self.items) - len(done) - cut, "== 0")
        res.add("recoveries cut short by the next kill", cut)
        if done:
            res.add("recovery s (restart→first commit, max)", round(max(done), 1))
        for w, started, seconds, cut, pid in self.items:
            if seconds is None and not cut:
                res.notes.append(
                    f"recovery without a first commit: {w.name} (pid {pid}) restarted {started - t0:.0f} s into the"
                    f" scenario, alive {w.alive()}, no commit in {self.TIMEOUT_S:.0f} s with the broker up"
                )


# ------------------------------------------------------------------------------------------------
def crash_storm(ctx: Context) -> ScenarioResult:
    """3 workers on 12 partitions, live traffic (errors, slow calls, late queue spans, 5,000-span
    traces, mis-partitioned messages to re-key, poison); kill -9 a random worker every few seconds
    and restart it; stop the broker (SIGTERM) and start it again, kill it (SIGKILL) and start it
    again; drain; judge every kept span exactly once against the truth."""
    p, res, truth = ctx.profile, ScenarioResult("crash storm"), Truth()
    fleet = _fleet(ctx, "storm", 3, 12)
    with _judged(ctx, res, fleet) as t0:
        fleet.start_all()
        plan = TrafficPlan(
            traces=p.storm_traces, rate=p.storm_rate, fmt="avro", big_traces=p.storm_big_traces, partitions=12, seed=11
        )
        traffic = Traffic(ctx.bootstrap, fleet.input_topic, plan, truth).start()
        run_s = p.storm_traces / p.storm_rate
        broker_at = [run_s * (i + 1) / (p.storm_broker_restarts + 1) for i in range(p.storm_broker_restarts)]
        rng = random.Random(3)
        kills, recoveries, broker_downtime = 0, _Recoveries(), []
        outages: list[tuple[int, int]] = []  # (wall-clock ns) the broker was away
        next_kill = time.monotonic() + p.storm_kill_every_s
        last_say = 0.0
        deadline = time.monotonic() + plan.max_seconds
        # until the traffic is done and every kill happened (kills go on into the drain)
        while (not traffic.done.is_set() or kills < p.storm_kills or broker_at) and time.monotonic() < deadline:
            now = time.monotonic()
            if broker_at and now - t0 >= broker_at[0]:
                broker_at.pop(0)
                hard = len(broker_at) == 0 and p.storm_broker_restarts > 1
                if ctx.broker.restartable:
                    ctx.say(f"[crash storm] broker {'SIGKILL' if hard else 'SIGTERM'} and start again")
                    b0, down_ns = time.monotonic(), time.time_ns()
                    ctx.broker.stop(kill=hard)
                    time.sleep(2)  # down long enough for every client to notice
                    ctx.broker.start()
                    broker_downtime.append(time.monotonic() - b0)
                    recoveries.broker_away(b0, time.monotonic())
                    outages.append((down_ns, time.time_ns()))
                else:
                    res.notes.append("external cluster: broker restarts skipped")
            if kills < p.storm_kills and now >= next_kill:
                alive = [w for w in fleet.workers if w.alive()]
                if alive:
                    w = rng.choice(alive)
                    ctx.say(f"[crash storm] kill -9 {w.name} (pid {w.job.proc.pid}) and restart it")
                    fleet.kill(w)
                    w.start()
                    recoveries.started(w)
                    kills += 1
                next_kill = now + p.storm_kill_every_s
            fleet.revive()
            recoveries.poll(now)
            if now - last_say >= 5:
                last_say = now
                _progress(ctx, "crash storm", t0, truth, fleet, f"kills {kills}")
            time.sleep(0.2)
        traffic.join(120)
        traffic.rate_figures(res)
        recoveries.wait()
        ctx.say("[crash storm] traffic done; draining")
        _drain(res, fleet, p.drain_timeout_s)
        _exactness(res, fleet, truth, outages=outages)
        res.add("kills", kills, f">= {min(p.storm_kills, 1)}")
        res.add("broker restarts", len(broker_downtime))
        if broker_downtime:
            res.add("broker downtime s (max)", round(max(broker_downtime), 1))
        recoveries.figures(res, t0)
        _fleet_figures(res, fleet)
    return res


def zombie(ctx: Context) -> ScenarioResult:
    """SIGSTOP one of two workers past its session timeout so its partitions move, SIGCONT it:
    nothing it writes afterwards may become visible, the exactness checks hold."""
    p, res, truth = ctx.profile, ScenarioResult("zombie"), Truth()
    fleet = _fleet(ctx, "zombie", 2, 6)
    with _judged(ctx, res, fleet):
        fleet.start_all()
        survivor, z = fleet.workers
        plan = TrafficPlan(traces=p.zombie_traces, rate=p.zombie_rate, fmt="avro", partitions=6, seed=12)
        traffic = Traffic(ctx.bootstrap, fleet.input_topic, plan, truth).start()
        _wait(
            lambda: z.job.metric("tailsift_spans_buffered") > 0 and z.job.metric("tailsift_flush_seconds_count") > 0,
            120,
        )
        ctx.say("[zombie] SIGSTOP w1 with traces buffered")
        frozen_at = time.monotonic()
        z.job.suspend()
        fleet.wait_members(1, 120)
        res.add("s until its partitions moved", round(time.monotonic() - frozen_at, 1))
        # the survivor commits over the zombie's former partitions (twice: one may predate the move)
        flushes = survivor.job.metric("tailsift_flush_seconds_count")
        _wait(lambda: survivor.job.metric("tailsift_flush_seconds_count") >= flushes + 2, 60)
        ctx.say("[zombie] SIGCONT w1")
        z.job.resume()
        traffic.join(plan.max_seconds)
        traffic.rate_figures(res)
        _drain(res, fleet, p.drain_timeout_s)
        _exactness(res, fleet, truth)
        # the zombie may end fenced (its transaction aborted while it slept: a fatal producer error,
        # exit 3, restarted); the survivor never may, nor the zombie any other way
        _fleet_figures(res, fleet, "== 0", fenced=z)
    return res


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"condition not met within {timeout:.0f} s")


def fuzz_scenario(ctx: Context) -> list[ScenarioResult]:
    """Hostile messages interleaved with good traffic, once per wire format (half each): every
    hostile message dead-lettered with a reason, the good traffic exact, no worker restarts.
    The OTLP run's good traffic also carries unkeyed multi-trace requests to re-key."""
    return [_fuzz_one(ctx, fmt) for fmt in ("avro", "otlp_proto")]


def _fuzz_one(ctx: Context, fmt: str) -> ScenarioResult:
    p, res, truth = ctx.profile, ScenarioResult(f"fuzz {fmt}"), Truth()
    fleet = _fleet(ctx, f"fuzz-{fmt.split('_')[0]}", 1, 6, ingest={"format": fmt})
    with _judged(ctx, res, fleet) as t0:
        fleet.start_all()
        traces = p.fuzz_traces // 2
        plan = TrafficPlan(traces=traces, rate=p.fuzz_rate, fmt=fmt, partitions=6, poison_every=0, seed=13)
        traffic = Traffic(ctx.bootstrap, fleet.input_topic, plan, truth).start()
        producer = Producer({**PRODUCER_CONFIG, **clients.connection(ctx.bootstrap), "message.max.bytes": 8_000_000})
        n = p.fuzz_messages // 2
        interval = traces / p.fuzz_rate / max(n, 1)
        still_valid, by_kind = 0, {}
        odd_data: list[fuzz.Hostile] = []  # added to the truth after the traffic thread is done with it

        def tagged(kind: str):
            def cb(err, msg) -> None:
                if err is None:
                    truth.poison[(msg.partition(), msg.offset())] = kind

            return cb

        t_start = time.monotonic()
        for i, h in enumerate(fuzz.messages(n, fmt, seed=17 if fmt == "avro" else 19)):
            if time.monotonic() - t0 > plan.max_seconds:
                break
            if h.kind in ctx.fuzz_skip:
                continue
            by_kind[h.kind] = by_kind.get(h.kind, 0) + 1
            if h.kind in fuzz.DATA_KINDS:  # odd but valid: judged as good traffic
                odd_data.append(h)
                producer.produce(fleet.input_topic, h.value, h.key)
            elif h.kind in fuzz.MUTATIONS and fuzz.still_valid(h.value, fmt):
                # a mutation the job takes: not hostile, judged as good traffic (its spans counted:
                # once counted as "hostile spans counted in SLIs")
                still_valid += 1
                odd_data.append(h)
                truth.mutations.add(hashlib.sha256(h.value).hexdigest())
                producer.produce(fleet.input_topic, h.value, h.key)
            else:
                truth.poison_sent += 1
                producer.produce(fleet.input_topic, h.value, h.key, on_delivery=tagged(h.kind))
            producer.poll(0)
            pause = t_start + (i + 1) * interval - time.monotonic()
            if pause > 0:
                producer.poll(pause)
            if i % 200 == 0:
                fleet.revive()
                _progress(ctx, f"fuzz {fmt}", t0, truth, fleet, f"hostile {i:,}/{n:,}")
        if producer.flush(120):
            raise RuntimeError("hostile messages not delivered")
        traffic.join(plan.max_seconds)
        for h in odd_data:
            for trace_id, batches in fuzz.truth_batches(h.value, fmt):
                truth.add_batches(trace_id, batches)
        _drain(res, fleet, p.drain_timeout_s)
        ex = _exactness(res, fleet, truth, poison_judged=False)
        res.add("hostile messages sent", truth.poison_sent + still_valid)
        if ctx.fuzz_skip:
            res.notes.append(f"not sent (--fuzz-skip): {', '.join(ctx.fuzz_skip)}")
        res.add("mutations that still decode (judged as good)", still_valid)
        res.add(
            f"odd but valid messages sent ({', '.join(sorted(fuzz.DATA_KINDS))}: judged as good)",
            len(odd_data) - still_valid,
        )
        res.add("hostile not dead-lettered", ex.poison_missing, "== 0")
        res.add("good messages dead-lettered", ex.good_deadlettered, "== 0")
        res.add("hostile spans counted in SLIs", ex.hostile_sli_spans, "== 0")
        for kind, reasons in sorted(ex.poison_reasons.items()):
            missing = reasons.get("(not dead-lettered)", 0)
            res.add(f"not dead-lettered: {kind}", missing, "== 0")
            res.notes.append(f"{kind}: " + ", ".join(f"{r} {c}" for r, c in sorted(reasons.items())))
        _fleet_figures(res, fleet, "== 0")
    return res


def overload(ctx: Context) -> ScenarioResult:
    """Measure one worker's sustained throughput on a backlog, then offer it ``overload_factor``
    times that for ``overload_seconds`` with a low ``max_buffered_bytes``: RSS stays under its
    bound, lag grows then drains to zero, no decision is forced early, the outputs stay exact."""
    p, res, truth = ctx.profile, ScenarioResult("overload"), Truth()
    fleet = _fleet(
        ctx,
        "overload",
        1,
        6,
        assemble={**ASSEMBLE, "max_buffered_bytes": p.overload_buffer_bytes, "overflow": "backpressure"},
    )
    with _judged(ctx, res, fleet) as t0:
        fleet.start_all()
        (w,) = fleet.workers
        time.sleep(1)
        idle_rss = w.rss()
        # 1. sustained throughput: a backlog produced as fast as possible, drained
        warm = TrafficPlan(traces=600, rate=10_000, fmt="avro", partitions=6, poison_every=0, seed=14)
        Traffic(ctx.bootstrap, fleet.input_topic, warm, truth).start().join(300)
        m0, s0 = time.monotonic(), w.job.metric("tailsift_spans_ingested_total")
        _wait(lambda: w.job.metric("tailsift_spans_ingested_total") >= truth.spans, p.drain_timeout_s)
        sustained = (truth.spans - s0) / max(time.monotonic() - m0, 1e-3)
        fleet.wait_drained(p.drain_timeout_s)
        spans_per_trace = truth.spans / max(len(truth.traces), 1)
        offered = p.overload_factor * sustained
        res.add("sustained spans/s (measured)", round(sustained))
        res.add("offered spans/s (target)", round(offered))
        # 2. the overload
        fleet.peak_lag = 0
        rss_before = w.peak_rss
        produced_before = truth.spans
        plan = TrafficPlan(
            traces=int(offered / spans_per_trace * p.overload_seconds),
            rate=offered / spans_per_trace,
            fmt="avro",
            partitions=6,
            poison_every=0,
            seed=15,
            max_seconds=p.overload_seconds,  # the overload lasts this long even if the generator falls short
        )
        o0 = time.monotonic()
        traffic = Traffic(ctx.bootstrap, fleet.input_topic, plan, truth).start()
        last = 0.0
        while not traffic.done.is_set() and time.monotonic() - o0 < plan.max_seconds:
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                _progress(ctx, "overload", t0, truth, fleet, f"RSS {w.rss() / 2**20:.0f} MiB")
            time.sleep(0.2)
        traffic.join(60)
        produce_s = time.monotonic() - o0
        res.add("offered spans/s (achieved)", round((truth.spans - produced_before) / produce_s))
        _drain(res, fleet, p.drain_timeout_s)
        forced = w.job.metric("tailsift_decision_points_total", trigger="memory_bound")
        paused = w.job.metric("tailsift_backpressure_seconds_total")
        _exactness(res, fleet, truth, poison_judged=False)
        res.add("decisions forced early", forced, "== 0")
        res.add("backpressure s", round(paused, 1))
        res.add("peak lag grew (messages)", fleet.peak_lag, "> 0")
        res.add("lag after drain", fleet.lag if fleet.lag is not None else -1, "== 0")
        # bound: idle RSS + the buffer bound counted 4x (Python objects around raw bytes) + librdkafka's
        # prefetch queue and one fetch (sized from the buffer bound: pipeline.kafka.clients) + 96 MiB
        prefetch = clients.prefetch_bytes(fleet.cfg)
        bound = idle_rss + 4 * p.overload_buffer_bytes + 2 * prefetch + 96 * 2**20
        res.add("idle RSS MiB", round(idle_rss / 2**20, 1))
        res.add("peak RSS MiB (overload)", round(max(w.peak_rss, rss_before) / 2**20, 1), f"<= {bound / 2**20:.1f}")
        res.notes.append(
            "RSS bound = idle RSS + 4 x max_buffered_bytes + 2 x librdkafka prefetch"
            f" ({prefetch / 2**20:.1f} MiB: its queue and one fetch) + 96 MiB (interpreter, caches, allocator)"
        )
        _fleet_figures(res, fleet, "== 0")
    return res


def pii_canaries(ctx: Context) -> ScenarioResult:
    """Canaries in every place a producer can put text, every trace kept; zero raw canaries in
    any output topic (keys and values), any worker log line, /metrics, the dead letters."""
    p, res, truth = ctx.profile, ScenarioResult("canaries"), Truth()
    fleet = _fleet(ctx, "canary", 1, 3, sampling=ALL)  # privacy is on by default
    with _judged(ctx, res, fleet):
        fleet.start_all()
        (w,) = fleet.workers
        plan = TrafficPlan(
            traces=p.canary_traces,
            rate=200,
            fmt="avro",
            partitions=3,
            poison_every=0,
            seed=16,
            error_rate=0.2,
            canaries=canaries.GENERATOR_CANARIES,
        )
        Traffic(ctx.bootstrap, fleet.input_topic, plan, truth).start().join(300)
        rng = random.Random(5)
        producer = Producer(clients.connection(ctx.bootstrap))
        planted = 20
        for _ in range(planted):
            tid = rng.randbytes(16)
            b = canaries.planted_batch(rng, tid)
            producer.produce(fleet.input_topic, fuzz.encode(b, "avro"), tid)
            truth.add_batches(tid, [b])
        # dead-letter path: garbage carrying canaries, and a truncated canary message
        for value in (
            canaries.text(rng).encode(),
            fuzz.encode(canaries.planted_batch(rng, rng.randbytes(16)), "avro")[:-9],
        ):
            producer.produce(fleet.input_topic, value, rng.randbytes(16))
        producer.flush(30)
        _drain(res, fleet, p.drain_timeout_s)
        metrics_text = urllib.request.urlopen(w.job.metrics_url, timeout=10).read()
        res.add("traces kept", len(verify.kept_records(ctx.bootstrap, fleet.cfg.topics.traces_kept.name)), "> 0")
        total = 0
        for key, topic in fleet.cfg.topics.all().items():
            if key == "spans_raw":
                continue  # the input holds the canaries by construction
            blob = b"\n".join((k or b"") + b"\n" + (v or b"") for _, _, k, v in read_all(ctx.bootstrap, topic.name))
            n = len(canaries.hits(blob))
            total += n
            res.add(f"canary hits: topic {key}", n, "== 0")
            if n and key == "traces_kept":
                where: set[str] = set()
                for trace in verify.kept_records(ctx.bootstrap, topic.name):
                    where |= canaries.locate(trace)
                res.notes.append("raw in traces.kept: " + "; ".join(sorted(where)))
            elif n:
                res.notes.append(f"raw in topic {key}: {', '.join(canaries.hits(blob))}")
        fleet.close()  # the logs are complete once the worker stopped
        for sink, blob in (("worker logs", fleet.logs().encode()), ("/metrics", metrics_text)):
            found = canaries.hits(blob)
            total += len(found)
            res.add(f"canary hits: {sink}", len(found), "== 0")
            if found:
                res.notes.append(f"{sink}: {', '.join(found)}")
        res.add("canary hits (all sinks)", total, "== 0")
        _fleet_figures(res, fleet, "== 0")
    return res


SCENARIOS = {
    "crash": lambda ctx: [crash_storm(ctx)],
    "zombie": lambda ctx: [zombie(ctx)],
    "fuzz": fuzz_scenario,
    "overload": lambda ctx: [overload(ctx)],
    "canaries": lambda ctx: [pii_canaries(ctx)],
}
