"""``tailsift demo`` / ``make demo``: the whole path on a real broker in about a minute.

Starts the local broker (unless one is given), creates this run's topics, starts the job and the
aggregation stage as their own processes, generates ~30 s of traffic with live progress, waits
until every span is decided and windowed and the stage has emitted the last merged windows, prints
the summary (and where the stage's web views are), and stops everything it started."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from confluent_kafka.admin import AdminClient
from rich.console import Console

from pipeline import config as config_mod
from pipeline.aggregate.proc import AggregateProcess
from pipeline.jobproc import JobProcess
from pipeline.kafka import clients
from pipeline.localkafka import broker
from pipeline.report import collect, render, write_html
from pipeline.topics import create_topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(bootstrap: str, run_id: str, workdir: Path, **overrides: dict) -> tuple[Path, config_mod.Config]:
    """A config for one throw-away run: its own topics and consumer group."""
    defaults = config_mod.TopicsConfig()
    data = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"{run_id}-tailsift",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        # every topic the config knows, renamed for this run; fewer partitions than production
        "topics": {
            key: {
                **topic.model_dump(exclude_defaults=True),
                "name": f"{run_id}.{topic.name}",
                "partitions": 6 if key in ("spans_raw", "decisions") else min(topic.partitions, 3),
            }
            for key, topic in defaults.all().items()
        },
        "assemble": {"decision_wait_ms": 3000},
        "sli": {"window_seconds": 5, "grace_seconds": 2},
        "job": {"data_dir": str(workdir / "faust"), "commit_interval_ms": 500},
        "metrics": {"port": free_port()},
        "aggregate": {"web_port": free_port(), "data_dir": str(workdir / "aggregate")},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path = workdir / "tailsift.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, config_mod.load(path)


def ensure_token_key(console: Console) -> None:
    """Privacy is on by default; a demo or bench run without a configured key gets a random
    one that lives only in this process and the job it starts (its tokens match nothing else)."""
    if not os.environ.get("TAILSIFT_TOKEN_KEYS"):
        os.environ["TAILSIFT_TOKEN_KEYS"] = "run1:" + secrets.token_hex(32)
        console.print("  token key: a random one for this run (set TAILSIFT_TOKEN_KEYS to choose)")


def delete_topics(cfg: config_mod.Config) -> None:
    admin = AdminClient(clients.base(cfg))
    names = [t.name for t in cfg.topics.all().values()]
    # the aggregation stage's own topics (Faust changelogs, ticks, assignor) share its app id prefix
    stage_prefix = f"{cfg.kafka.group_id}-aggregate-"
    names += [n for n in admin.list_topics(timeout=30).topics if n.startswith(stage_prefix)]
    for fut in admin.delete_topics(names).values():
        try:
            fut.result(30)
        except Exception:  # noqa: BLE001 - best effort clean-up
            pass


def merged_span_total(cfg: config_mod.Config, expected: int, timeout: float = 30.0) -> int:
    """Spans in sli.merged once it holds ``expected`` (its last records become visible to
    read_committed readers with the stage's next transaction), or what it holds at the timeout."""
    from pipeline.sli_reader import read_windows

    deadline = time.monotonic() + timeout
    while True:
        total = sum(m.span_count for m in read_windows(cfg, 10, "merged").values())
        if total >= expected or time.monotonic() > deadline:
            return total
        time.sleep(0.5)


def main(args: argparse.Namespace) -> int:
    from pipeline.generator.callgraph import GeneratorConfig
    from pipeline.generator.produce import produce

    console = Console(width=None if sys.stdout.isatty() else 120)
    started = time.monotonic()
    with broker(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory(prefix="tailsift-demo-") as tmp:
        console.print(f"[bold]Kafka[/] at {bootstrap}")
        ensure_token_key(console)
        run_id = f"demo-{uuid.uuid4().hex[:6]}"
        path, cfg = run_config(bootstrap, run_id, Path(tmp))
        for r in create_topics(cfg):
            console.print(f"  topic {r.name}: {r.status}")
        job = JobProcess(path, cfg.metrics.port, Path(tmp) / "job.log").start()
        a = cfg.aggregate
        stage = AggregateProcess(path, a.web_host, a.web_port, Path(tmp) / "aggregate.log").start()
        try:
            console.print("[bold]Starting the job[/] (tailsift run) and the aggregation stage (tailsift aggregate) …")
            job.wait_ready(bootstrap, cfg.kafka.group_id)
            stage.wait_ready()
            console.print(f"  aggregate views: {stage.url}/sli  {stage.url}/slo  {stage.url}/healthz")
            console.print(f"[bold]Generating[/] {args.duration:g} s of traffic at {args.rate:g} traces/s …")
            stats = produce(
                bootstrap,
                cfg.topics.spans_raw.name,
                count=None,
                duration_s=args.duration,
                rate=args.rate,
                config=GeneratorConfig(seed=42),
                progress=True,
            )
            console.print(f"  produced {stats.traces:,} traces, {stats.spans:,} spans, {stats.messages:,} messages")
            console.print("[bold]Waiting[/] for the last decisions and SLI windows …")
            metrics = job.wait_drained(stats.spans)
            report = collect(cfg, metrics_url=job.metrics_url)
            report.metrics = metrics
            console.print("[bold]Waiting[/] for the aggregation stage to emit the last merged windows …")
            health = stage.wait_idle(1, timeout=120)
            merged_spans = merged_span_total(cfg, stats.spans)
            console.print(
                f"  aggregate: {health['counts']['partials']:,} partials → {health['counts']['emitted']:,} merged "
                f"windows (+{health['counts']['emitted_late']} late) on {cfg.topics.sli_merged.name}, "
                f"{merged_spans:,} spans; views were at {stage.url}/sli and /slo"
            )
        finally:
            code = job.stop()
            console.print(f"  job stopped (exit {code}); aggregate stopped (exit {stage.stop()})")
        render(report)
        html = Path(os.environ.get("TAILSIFT_DEMO_HTML") or Path(tempfile.gettempdir()) / f"tailsift-{run_id}.html")
        write_html(cfg, str(html), metrics=metrics)  # the job is stopped: its last scrape has the service graph
        delete_topics(cfg)
    ok = (
        len(report.kept_traces) > 0
        and len(report.sli) > 0
        and report.sli_spans == stats.spans
        and merged_spans == stats.spans
    )
    console.print(
        f"[bold]{'OK' if ok else 'FAILED'}[/] in {time.monotonic() - started:.0f} s: "
        f"{len(report.kept_traces):,} kept traces, SLI rows for {len(report.sli)} services, "
        f"SLI spans {report.sli_spans:,} (merged {merged_spans:,}) / produced {stats.spans:,}"
    )
    console.print(f"[bold]HTML report[/]: {html}  (set TAILSIFT_DEMO_HTML to choose the path)")
    return 0 if ok else 1
