"""The aggregation stage on the real broker: partials of several workers (written in transactions,
one of them aborted) merge into windows whose counts equal what was produced and whose sketches
equal a direct merge bin for bin; after a kill -9 and a restart each window is still emitted
exactly once; beyond ``max_open_windows`` the oldest windows close early and the sums stay exact."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from operators.sli import SliWindows, sketch_from_record, window_record
from pipeline.aggregate.app import TICK, ensure_ticks_topic, ticks_topic
from pipeline.aggregate.proc import AggregateProcess
from pipeline.aggregate.windows import key_of_emission
from pipeline.codecs import avro
from pipeline.demo import free_port, run_config
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from pipeline.readback import read_all
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration
S = 1_000_000_000
MS = 1_000_000
WINDOW = 2 * S
WORKERS = ("worker-a", "worker-b", "worker-c")


def partials(n_traces: int, seed: int, t0: int) -> list[tuple[str, bytes, bytes, int]]:
    """SliWindow partials as three exactly_once workers write them: each batch of spans is read once
    it has ended (in end-time order), by the worker owning its input partition; every 150 batches
    (a commit interval) each worker flushes its open windows as partials stamped with its clock."""
    gen = TraceGenerator(GeneratorConfig(seed=seed, error_rate=0.1, slow_rate=0.05))
    batches = []
    for i in range(n_traces):
        trace = gen.trace(t0 + i * 10 * MS)
        for value in trace.encoded:
            batch = avro.decode_batch(value)
            end = max(s["end_time_unix_nano"] for s in batch["spans"])
            batches.append((end, trace.trace_id, batch))
    batches.sort(key=lambda b: (b[0], b[1]))
    sli = {w: SliWindows(WINDOW, S) for w in WORKERS}
    out: list[tuple[str, bytes, bytes, int]] = []
    for i, (now, trace_id, batch) in enumerate(batches):
        partition = trace_id[-1] % 6
        sli[WORKERS[partition % len(WORKERS)]].add(partition, batch["service"], batch["spans"])
        if i % 150 == 149 or i == len(batches) - 1:
            for w in WORKERS:
                for agg in sli[w].due(now, flush_all=True):
                    record = window_record(agg, w, now)
                    out.append((w, agg.service.encode(), avro.encode(avro.SLI_WINDOW, record), i // 150))
    return out


def restamped(records, shift_ns: int) -> list[tuple[str, bytes, bytes, int]]:
    """The partials moved ``shift_ns`` (whole windows) later: windows and ``emitted_at`` alike."""
    if not shift_ns:
        return records
    out = []
    for w, key, value, flush in records:
        r = avro.decode(avro.SLI_WINDOW, value)
        for field in ("window_start_unix_nano", "window_end_unix_nano", "emitted_at_unix_nano"):
            r[field] += shift_ns
        out.append((w, key, avro.encode(avro.SLI_WINDOW, r), flush))
    return out


def produce(cfg, records: list[tuple[str, bytes, bytes, int]], tag: str, shift_ns: int | None = None):
    """One transactional producer per worker, one transaction per worker and flush (as the job's
    commit interval); plus one aborted transaction of partials a read_uncommitted reader would count.

    Live workers stamp a partial with their clock as they write it. Partials made before the stage
    started would be stamped behind the clock by the time they are written on a loaded machine, and
    an idle tick (clock − ``idle_seconds``) could rightly close their windows before they are read:
    so, once the producers are ready (their transaction coordinator can take seconds), the partials
    are moved by whole windows to start one second past the clock — unless ``shift_ns`` is given (the
    shift of an earlier part of the same records). Returns the shift and the records as written."""
    producers = {}
    for w in WORKERS:
        p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "transactional.id": f"{tag}-{w}"})
        p.init_transactions(30)
        producers[w] = p
    if shift_ns is None:
        first = min(avro.decode(avro.SLI_WINDOW, v)["window_start_unix_nano"] for _, _, v, _ in records)
        shift_ns = max(0, -(-(time.time_ns() + S - first) // WINDOW) * WINDOW)
    records = restamped(records, shift_ns)
    topic = cfg.topics.sli_windows.name
    groups = defaultdict(list)
    for w, key, value, flush in records:
        groups[(flush, w)].append((key, value))
    for (_, w), items in sorted(groups.items()):
        p = producers[w]
        p.begin_transaction()
        for key, value in items:
            p.produce(topic, value, key)
        p.commit_transaction(30)
    doomed = producers[WORKERS[0]]
    doomed.begin_transaction()
    for _, key, value, _ in records[:5]:
        doomed.produce(topic, value, key)
    doomed.flush(10)
    doomed.abort_transaction(30)
    return shift_ns, records


def merged_records(cfg) -> list[tuple[bytes, dict]]:
    return [
        (key, avro.decode(avro.SLI_WINDOW, value))
        for _, _, key, value in read_all(cfg.kafka.bootstrap_servers, cfg.topics.sli_merged.name, timeout=60)
    ]


def window_of(r: dict) -> tuple:
    return (r["service"], r["operation"], r["span_kind"], r["status"], r["window_start_unix_nano"])


def bins(sketch: dict) -> Counter:
    c = Counter()
    for i, n in enumerate(sketch["bin_counts"]):
        if n:
            c[sketch["bin_offset"] + i] += n
    c["zero"] += sketch["zero_count"]
    return +c


def expected(records) -> dict[tuple, dict]:
    """Direct merge of the committed partials: counts summed, bins summed by bin key."""
    out: dict[tuple, dict] = {}
    for _, _, value, _ in records:
        r = avro.decode(avro.SLI_WINDOW, value)
        e = out.setdefault(window_of(r), {"spans": 0, "errors": 0, "roots": 0, "bins": Counter(), "max": 0.0})
        e["spans"] += r["span_count"]
        e["errors"] += r["error_count"]
        e["roots"] += r["root_count"]
        e["bins"].update(bins(r["sketch"]))
        e["max"] = max(e["max"], r["latency_ms"]["max"])
    return out


def wait_merged(cfg, records, timeout: float = 60.0) -> list[tuple[bytes, dict]]:
    """sli_merged once it holds at least every produced span (the last emissions become visible
    to read_committed readers with the stage's next transaction)."""
    want = sum(avro.decode(avro.SLI_WINDOW, v)["span_count"] for _, _, v, _ in records)
    deadline = time.monotonic() + timeout
    while True:
        merged = merged_records(cfg)
        if sum(r["span_count"] for _, r in merged) >= want or time.monotonic() > deadline:
            return merged
        time.sleep(0.5)


def assert_exact(cfg, records, late_allowed: bool) -> list[tuple[bytes, dict]]:
    merged = wait_merged(cfg, records)
    keys = [k for k, _ in merged]
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} merged records emitted twice"
    got: dict[tuple, dict] = {}
    emissions = Counter()
    for key, r in merged:
        assert r["worker"] == "aggregate"
        emissions[key_of_emission(key)] += 1
        g = got.setdefault(window_of(r), {"spans": 0, "errors": 0, "roots": 0, "bins": Counter(), "max": 0.0})
        g["spans"] += r["span_count"]
        g["errors"] += r["error_count"]
        g["roots"] += r["root_count"]
        g["bins"].update(bins(r["sketch"]))
        g["max"] = max(g["max"], r["latency_ms"]["max"])
    want = expected(records)
    assert set(got) == set(want)
    for w, e in want.items():
        assert got[w] == e, w
    if not late_allowed:
        assert max(emissions.values()) == 1, "a window was emitted in more than one record"
    assert len(want) > 30 and sum(e["errors"] for e in want.values()) > 0
    return merged


def assert_metrics_match(exposition: str, merged: list[dict], slo: list[dict]) -> None:
    """/metrics (what Grafana reads) shows, per service, the newest merged window: its span and
    error counts and the latency quantiles of all its records' sketches merged — recomputed here
    from sli_merged with DDSketch's own merge — and the SLO status /slo shows."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    services = {r["service"] for r in merged}
    assert len(services) > 1
    for service in services:
        mine = [r for r in merged if r["service"] == service]
        newest = max(r["window_end_unix_nano"] for r in mine)
        window = [r for r in mine if r["window_end_unix_nano"] == newest]
        assert samples[("tailsift_merged_window_spans", (("service", service),))] == sum(
            r["span_count"] for r in window
        )
        assert samples[("tailsift_merged_window_errors", (("service", service),))] == sum(
            r["error_count"] for r in window
        )
        sketch = sketch_from_record(window[0]["sketch"])
        for r in window[1:]:
            sketch.merge(sketch_from_record(r["sketch"]))
        for q in (0.5, 0.9, 0.99):
            got = samples[("tailsift_merged_latency_ms", (("quantile", str(q)), ("service", service)))]
            assert got == pytest.approx(sketch.get_quantile_value(q)), (service, q)
    assert samples[("tailsift_slo_budget_remaining", (("slo", "checkout-avail"),))] == pytest.approx(
        slo[0]["budget_remaining"]
    )


def lateness_s(records) -> float:
    """The grace the stage needs so that no partial arrives after its window closed: how far the
    newest ``emitted_at`` read before a partial is past that partial's window end (a batch of a slow
    trace holds spans that ended seconds before the batch did)."""
    late = newest = 0
    for _, _, value, _ in records:
        r = avro.decode(avro.SLI_WINDOW, value)
        late = max(late, newest - r["window_end_unix_nano"])
        newest = max(newest, r["emitted_at_unix_nano"])
    return late / S


def setup(kafka_bootstrap, unique_name, tmp_path, records, **aggregate):
    port = free_port()
    path, cfg = run_config(
        kafka_bootstrap,
        f"agg-{unique_name}",
        tmp_path,
        aggregate={
            # live traffic: partials are stamped at about the stage's clock (see produce)
            "grace_seconds": lateness_s(records) + 1,
            "idle_seconds": 10,
            "tick_ms": 200,
            "web_port": port,
            "data_dir": str(tmp_path / "aggregate"),
            **aggregate,
        },
        slo={"objectives": [{"name": "checkout-avail", "service": "checkout", "objective_percent": 99}]},
    )
    assert all(r.status == "created" for r in create_topics(cfg))
    return path, cfg, AggregateProcess(path, "127.0.0.1", port, tmp_path / "aggregate.log")


def test_partials_of_three_workers_merge_exactly_once_per_window(kafka_bootstrap, unique_name, tmp_path):
    records = partials(200, seed=71, t0=time.time_ns())
    path, cfg, stage = setup(kafka_bootstrap, unique_name, tmp_path, records)
    stage.start()
    try:
        stage.wait_ready()
        _, records = produce(cfg, records, f"agg-{unique_name}")
        health = stage.wait_idle(len(records))
        slo = stage.get("/slo")["objectives"]
        sli = stage.get("/sli?service=checkout")["windows"]
        with urllib.request.urlopen(stage.url + "/metrics", timeout=5) as resp:
            exposition = resp.read().decode()
    finally:
        stage.stop()
    merged = assert_exact(cfg, records, late_allowed=False)
    assert_metrics_match(exposition, [r for _, r in merged], slo)
    assert health["counts"]["partials"] == len(records)  # the aborted transaction's partials never arrived
    checkout = [r for _, r in merged if r["service"] == "checkout"]
    assert [s["slo"] for s in slo] == ["checkout-avail"]
    total = sum(r["span_count"] for r in checkout)
    bad = sum(r["error_count"] for r in checkout)
    assert slo[0]["budget_remaining"] == pytest.approx(1 - (bad / total) / 0.01)
    assert sli and all(w["service"] == "checkout" for w in sli)

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sli", "-c", str(path), "--by", "service", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and cfg.topics.sli_merged.name in out.stderr, out.stderr  # read sli.merged
    want = Counter()
    for _, key, value, _ in records:
        want[key.decode()] += avro.decode(avro.SLI_WINDOW, value)["span_count"]
    assert {r["service"]: r["spans"] for r in map(json.loads, out.stdout.splitlines())} == want


def test_kill_minus_9_mid_stream_then_restart_emits_each_window_once(kafka_bootstrap, unique_name, tmp_path):
    records = partials(300, seed=72, t0=time.time_ns())
    path, cfg, stage = setup(kafka_bootstrap, unique_name, tmp_path, records)
    half = next(i for i, r in enumerate(records) if r[3] >= records[-1][3] // 2)  # a flush boundary
    stage.start()
    try:
        stage.wait_ready()
        shift, _ = produce(cfg, records[:half], f"agg-{unique_name}-1")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the first half read, part of it not yet committed
            h = stage.health()
            if h and h["counts"]["partials"] >= half:
                break
            time.sleep(0.1)
        # at once: a pause of idle_seconds here would rightly close the open windows (idle tick)
        # and make the second half's partials late, emitted as further records
        assert 0 < h["open_windows"] and h["counts"]["partials"] == half, h
        stage.kill()
        produce(cfg, records[half:], f"agg-{unique_name}-2", shift)
        stage.start()
        stage.wait_ready()
        # its counts start at 0 (it reads from the committed offsets on) and at least every partial of
        # the second half is read: no window open with none unread, not a moment between two windows
        stage.wait_idle(len(records) - half)
    finally:
        stage.stop()
    try:
        assert_exact(cfg, restamped(records, shift), late_allowed=False)
    except AssertionError as exc:  # failed once in CI (22:51: six windows of one window time missing),
        # passed in 3 reruns: the failure carries both instances' log (INFO and up) — the pytest temp
        # dir holding it is rotated away before it can be read
        log = "\n".join(line for line in stage.log_tail(4000).splitlines() if "[DEBUG]" not in line)
        raise AssertionError(f"{exc}\n--- stage log, both instances:\n{log}") from None


def test_a_tick_written_after_partials_closes_no_window_before_they_are_read(kafka_bootstrap, unique_name, tmp_path):
    """Partials (old windows: their stamps a minute ago) are produced, then a tick that closes every
    one of their windows, then the stage starts and reads one record batch per fetch, so it is handed
    the tick while most partials of its partition are still unread. The old stage applied the tick:
    every window was emitted with the partials read so far and the rest came late as further records
    of their windows (more than one record per window, ``partials_late`` > 0). Now a tick only
    advances a partition whose partials are all read: each window is emitted once, exact."""
    records = partials(200, seed=74, t0=time.time_ns() - 60 * S)
    path, cfg, stage = setup(kafka_bootstrap, unique_name, tmp_path, records, idle_seconds=1)
    produce(cfg, records, f"agg-{unique_name}", shift_ns=0)
    ensure_ticks_topic(cfg)
    newest_end = max(avro.decode(avro.SLI_WINDOW, v)["window_end_unix_nano"] for _, _, v, _ in records)
    ticker = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for p in range(cfg.topics.sli_windows.partitions):
        ticker.produce(ticks_topic(cfg), TICK.pack(newest_end + 3_600 * S), partition=p)
    assert ticker.flush(30) == 0
    stage.env["CONSUMER_MAX_FETCH_SIZE"] = "1"  # Faust: one record batch per partition and fetch
    stage.start()
    try:
        stage.wait_ready()
        health = stage.wait_idle(len(records))
    finally:
        stage.stop()
    assert health["counts"]["partials_late"] == 0 and health["counts"]["ticks_behind"] > 0, health
    assert_exact(cfg, records, late_allowed=False)


def test_memory_bound_closes_the_oldest_windows_early_and_sums_stay_exact(kafka_bootstrap, unique_name, tmp_path):
    records = partials(200, seed=73, t0=time.time_ns())
    path, cfg, stage = setup(kafka_bootstrap, unique_name, tmp_path, records, max_open_windows=20)
    stage.start()
    try:
        stage.wait_ready()
        _, records = produce(cfg, records, f"agg-{unique_name}")
        health = stage.wait_idle(len(records))
    finally:
        stage.stop()
    assert health["counts"]["closed_by_bound"] > 0
    assert_exact(cfg, records, late_allowed=True)


def test_a_second_stage_instance_joining_and_leaving_neither_crashes_the_first_nor_breaks_exactness(
    kafka_bootstrap, unique_name, tmp_path
):
    """A second instance of the stage joins the group (partitions move to it) and leaves again
    (they come back). The old stage crashed a few seconds later: Faust kept the transactional
    producer of each partition that moved away (it stayed here as a standby replica, and Faust stops
    only the producers of revoked active partitions), the other instance's producer fenced it, and
    when the partition came back the fenced producer was reused — its first commit raised
    ProducerFenced ("Crashed reason=ProducerFenced" in the log, the process gone). Then, alive, its
    windows were not exact in 3 of 4 runs — one missing (a window the second instance opened in its
    last committed transaction) or short (53 spans for 55): Faust restored no table on an assignment
    ("highwater -1": it took a changelog's end from a fetch not made yet), so the second instance
    merged into empty windows and the first went on with its own stale copy of the partition that
    came back, emissions of an aborted transaction remembered as written. Now: alive, every returned
    partition ticked on, each window emitted once, exact."""
    records = partials(300, seed=75, t0=time.time_ns())
    path, cfg, stage = setup(kafka_bootstrap, unique_name, tmp_path, records)
    other_port = free_port()
    other_path = tmp_path / "tailsift-2.yaml"
    data = yaml.safe_load(path.read_text())
    data["aggregate"].update(web_port=other_port, data_dir=str(tmp_path / "aggregate-2"))
    other_path.write_text(yaml.safe_dump(data, sort_keys=False))
    other = AggregateProcess(other_path, "127.0.0.1", other_port, tmp_path / "aggregate-2.log")
    partitions = cfg.topics.sli_windows.partitions
    stage.start()
    try:
        stage.wait_ready()
        _, records = produce(cfg, records, f"agg-{unique_name}")  # all of them: none can come late
        other.start()
        other.wait_ready()  # the rebalance gave it partitions
        other.stop()  # SIGTERM: it leaves the group, its partitions come back
        wait_health(stage, lambda h: len(h["partitions"]) == partitions, "every partition back")
        back_ns = time.time_ns()
        # each returned partition is ticked on past its return: its tick offsets were committed (the
        # commit that raised ProducerFenced), and every window is emitted
        idle_ns = int(cfg.aggregate.idle_seconds * S)
        wait_health(
            stage,
            lambda h: (
                h["open_windows"] == 0 and all(t >= back_ns - idle_ns for t in h["event_time_unix_nano"].values())
            ),
            "every partition ticked on after its return, no window open",
        )
        assert stage.proc.poll() is None, stage.log_tail()
    finally:
        stage.stop()
        other.stop()
    assert "ProducerFenced" not in (tmp_path / "aggregate.log").read_text(errors="replace")
    assert_exact(cfg, records, late_allowed=False)


def wait_health(stage: AggregateProcess, cond, what: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    h = None
    while time.monotonic() < deadline:
        stage.check_alive()
        h = stage.health()
        if h is not None and cond(h):
            return h
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {h}; log tail:\n{stage.log_tail()}")
