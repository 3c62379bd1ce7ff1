"""``tailsift chaos``: run the scenarios against the local broker (a dedicated instance this run
starts and removes) or ``--bootstrap``/``KAFKA_BOOTSTRAP_SERVERS`` (broker restarts need
``--kafka-dir``, the instance directory of a deploy/local/kafka broker), print live progress,
the table of figures, and exit 1 when any figure misses its limit (``--relax`` exempts named
figures, shown as relaxed)."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.chaos.figures import print_table, to_json
from pipeline.chaos.fleet import Broker
from pipeline.chaos.profiles import PROFILES
from pipeline.chaos.scenarios import SCENARIOS, Context
from pipeline.localkafka import LAUNCHER


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run this scenario (repeatable; default: the profile's — full: all five, short: crash, fuzz, canaries)",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="full", help="sizes (default full; short: make test)")
    p.add_argument(
        "--bootstrap", default=None, help="an existing broker (default: KAFKA_BOOTSTRAP_SERVERS, else start one)"
    )
    p.add_argument(
        "--kafka-dir", default=None, help="instance dir of that broker (deploy/local/kafka --dir), to restart it"
    )
    p.add_argument("--workdir", default=None, help="keep configs and worker logs here (default: a temp dir, removed)")
    p.add_argument("--keep-topics", action="store_true", help="leave each scenario's topics on the broker (to debug)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    p.add_argument(
        "--fuzz-skip",
        action="append",
        default=[],
        metavar="KIND",
        help="do not send this hostile kind (repeatable), to measure past one that stalls the job, e.g. attr_1mib",
    )
    p.add_argument(
        "--relax",
        action="append",
        default=[],
        metavar="SCENARIO.FIGURE",
        help="a known failure to show but not fail on (repeatable; shell wildcards), "
        "e.g. 'fuzz *.not dead-lettered: time_*'",
    )


ORDER = ["crash", "zombie", "fuzz", "overload", "canaries"]


def _launcher(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PORT")}
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 130)

    def say(msg: str) -> None:
        console.print(msg, highlight=False, markup=False)

    if not os.environ.get("TAILSIFT_TOKEN_KEYS"):  # privacy is on by default: the workers need a key
        os.environ["TAILSIFT_TOKEN_KEYS"] = "chaos1:" + secrets.token_hex(32)
    profile = PROFILES[args.profile]
    names = [n for n in ORDER if n in (args.scenario or profile.scenarios)]
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    own_dir = None
    kafka_dir = args.kafka_dir
    if not bootstrap:
        state = Path(os.environ.get("TAILSIFT_KAFKA_DIR") or LAUNCHER.parents[2] / ".kafka")
        state.mkdir(parents=True, exist_ok=True)
        own_dir = Path(tempfile.mkdtemp(prefix="chaos-kafka-", dir=state))
        r = _launcher("start", "--port", "0", "--dir", str(own_dir))
        if r.returncode != 0:
            console.print(f"could not start a broker:\n{r.stderr}")
            return 2
        bootstrap, kafka_dir = r.stdout.strip().splitlines()[-1], str(own_dir)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tailsift-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(bootstrap, kafka_dir)
    ctx = Context(bootstrap, broker, workdir, profile, say, tuple(args.fuzz_skip), args.keep_topics)
    say(f"tailsift chaos: profile {profile.name}, scenarios {', '.join(names)}, Kafka {bootstrap}, logs in {workdir}")
    results = []
    t0 = time.monotonic()
    try:
        for name in names:
            say(f"=== {name}")
            for r in SCENARIOS[name](ctx):
                r.relax(args.relax)
                results.append(r)
                say(
                    f"=== {r.scenario}: {'ok' if r.ok else 'MISSED'} in {r.seconds:.0f} s"
                    + (f" ({r.error})" if r.error else "")
                )
    finally:
        if own_dir is not None:
            _launcher("stop", "--dir", str(own_dir))
            shutil.rmtree(own_dir, ignore_errors=True)
    print_table(results, console)
    ok = all(r.ok for r in results)
    say(
        f"tailsift chaos: {'every figure within its limit' if ok else 'FIGURES MISSED'} ({time.monotonic() - t0:.0f} s)"
    )
    if args.json:
        Path(args.json).write_text(to_json(results))
    if not args.workdir and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1
