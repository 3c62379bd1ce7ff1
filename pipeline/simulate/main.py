"""The ``tailsift simulate`` command: run the replay, write the JSON document, print the table.

Output is a function of the input and the configs only: no wall-clock time, nothing unordered —
two runs over the same input print the same bytes (the replay's own speed goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline import capture
from pipeline import config as config_mod
from pipeline.simulate.replay import Replay, SimConfig, merged

DEFAULT_TOPIC_MAX_BYTES = 1 << 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, metavar="CANDIDATE", help="the config to try (YAML)")
    p.add_argument("--against", metavar="CURRENT", help="compare with this config (e.g. the one in production)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE", help="a `tailsift capture` file")
    src.add_argument("--topic", metavar="NAME", help="read this topic of the candidate config's cluster")
    p.add_argument("--since", default="1h", help="with --topic: how far back (e.g. 15m, 1h; default 1h)")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_TOPIC_MAX_BYTES,
        help=f"with --topic: read at most this many bytes of keys and values (default {DEFAULT_TOPIC_MAX_BYTES:,})",
    )
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON here (schema: README)")
    p.add_argument(
        "--html",
        metavar="FILE",
        help="write the figures as one self-contained HTML page (charts, recall, the difference, example waterfalls)",
    )
    p.add_argument(
        "--slow-ms",
        type=float,
        action="append",
        metavar="MS",
        help="latency threshold(s) for the slow-trace recall (repeatable; default: the configs' latency "
        "SLO thresholds and latency policy thresholds)",
    )
    p.add_argument("--diff-limit", type=int, default=50, help="traces listed per side of the difference (default 50)")


def slow_thresholds(configs: list[config_mod.Config]) -> list[float]:
    """The latency SLO objectives' thresholds and the top-level latency policies' thresholds."""
    out: set[float] = set()
    for c in configs:
        out.update(o.threshold_ms for o in c.slo.objectives if o.type == "latency")
        out.update(p.threshold_ms for p in c.sampling.policies if p.type == "latency")
    return sorted(out)


def main(args: argparse.Namespace) -> int:
    from pipeline.privacy import PrivacyKeyError

    candidate = config_mod.load(args.config)
    configs = [SimConfig("candidate", args.config, candidate)]
    if args.against:
        configs.append(SimConfig("current", args.against, config_mod.load(args.against)))
    thresholds = args.slow_ms or slow_thresholds([c.config for c in configs])
    try:
        replay = Replay(configs, thresholds, diff_limit=args.diff_limit)
    except PrivacyKeyError as exc:
        print(f"tailsift simulate: {exc} (simulate protects kept traces as the job does)", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"tailsift simulate: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tailsift-simulate-") as tmp:
        try:
            if args.input:
                path, source = Path(args.input), f"file:{args.input}"
                if not path.is_file():
                    raise capture.CaptureError(f"{path}: no such file")
            else:
                path, source = Path(tmp) / "input.avro", f"topic:{args.topic} since {args.since}"
                from_ms = int(time.time() * 1000 - capture.parse_duration_s(args.since) * 1000)

                capture.capture(
                    candidate.kafka,
                    args.topic,
                    path,
                    max_bytes=args.max_bytes,
                    from_ms=from_ms,
                    range_text=f"since {args.since}",
                )
            started = time.perf_counter()
            parts = capture.partitions_in_file(path)
            replay.feed(merged({p: capture.read_file(path, p) for p in parts}))
            replay.finish()
        except capture.CaptureError as exc:
            print(f"tailsift simulate: {exc}", file=sys.stderr)
            return 1 if "no messages" in str(exc) or "no committed" in str(exc) else 2
    elapsed = time.perf_counter() - started
    result = replay.result(source)
    print(
        f"simulate: replayed {replay.spans:,} spans in {elapsed:.1f} s "
        f"({replay.spans * len(configs) / max(elapsed, 1e-9):,.0f} spans/s over {len(configs)} config(s))",
        file=sys.stderr,
    )
    if args.json:
        write_json(result, args.json)
    if args.html:
        from pipeline.htmlreport import render_simulation

        Path(args.html).write_text(render_simulation(result), encoding="utf-8")
        print(f"simulate: HTML report written to {args.html}", file=sys.stderr)
    print(render(result), end="")
    return 0


def write_json(result: dict, path: str) -> None:
    Path(path).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------ the table
def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def render(result: dict) -> str:
    """The figures as a plain-text table (deterministic: no terminal width, no colours)."""
    inp, configs = result["input"], result["configs"]
    seconds = (inp["last_event_ms"] - inp["first_event_ms"]) / 1000
    lines = [
        f"input: {inp['source']}",
        f"  {inp['messages']:,} messages, {inp['spans']:,} spans, {seconds:,.1f} s of event time "
        f"({_iso(inp['first_event_ms'])} .. {_iso(inp['last_event_ms'])})"
        + (f", {inp['invalid_messages']:,} invalid messages" if inp["invalid_messages"] else ""),
        "",
    ]
    width = max(14, *(len(c["name"]) + 2 for c in configs))
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn) -> None:
        rows.append((label, [fn(c) for c in configs]))

    row("config", lambda c: c["name"])
    row("traces seen", lambda c: f"{c['traces_seen']:,}")
    row("spans seen", lambda c: f"{c['spans_seen']:,}")
    row("kept traces", lambda c: f"{c['kept_traces']:,}")
    row("  share", lambda c: _pct(c["kept_traces"], c["traces_seen"]))
    row("kept spans", lambda c: f"{c['kept_spans']:,}")
    row("kept bytes", lambda c: f"{c['kept_bytes']:,}")
    row("kept spans/s", lambda c: f"{c['kept_spans_per_s']:,.1f}")
    row("kept bytes/s", lambda c: f"{c['kept_bytes_per_s']:,.0f}")
    row("Σ adjusted count", lambda c: f"{c['adjusted_count_sum']:,.1f}")
    row("  / traces seen", lambda c: f"{c['adjusted_count_sum'] / c['traces_seen']:.3f}" if c["traces_seen"] else "-")
    row(
        "error recall",
        lambda c: f"{c['recall']['error']['kept']}/{c['recall']['error']['seen']}",
    )
    for t in configs[0]["recall"]["slow"]:
        row(
            f"slow ≥ {t} ms recall", lambda c, t=t: f"{c['recall']['slow'][t]['kept']}/{c['recall']['slow'][t]['seen']}"
        )
    policies = sorted({p for c in configs for p in c["keep_share_by_policy"]})
    if policies:
        rows.append(("kept by policy", ["" for _ in configs]))
    for p in policies:
        row(f"  {p}", lambda c, p=p: f"{c['keep_share_by_policy'].get(p, 0):,}")
    services = sorted({s for c in configs for s in c["per_service"]})
    if services:
        rows.append(("kept/traces by root", ["" for _ in configs]))
    for s in services:
        row(
            f"  {s}",
            lambda c, s=s: (
                f"{c['per_service'].get(s, {}).get('kept', 0):,}/{c['per_service'].get(s, {}).get('traces', 0):,}"
            ),
        )
    dead = sorted({r for c in configs for r in c["dead_lettered"]})
    for r in dead:
        row(f"dead-lettered {r}", lambda c, r=r: f"{c['dead_lettered'].get(r, 0):,}")
    label_w = max(len(label) for label, _ in rows) + 2
    for label, cells in rows:
        lines.append((label.ljust(label_w) + "".join(cell.rjust(width) for cell in cells)).rstrip())
    diff = result.get("diff")
    if diff is not None:
        for side, title in (("only_candidate", "kept by candidate only"), ("only_current", "kept by current only")):
            lines += ["", f"{title}: {len(diff[side])}" + (" listed" if diff["more"] else "")]
            for e in diff[side]:
                lines.append(
                    f"  {e['trace_id']}  {e['root_service']}  {e['root_operation']}  {e['policy']}  {e['reason']}"
                )
        if diff["more"]:
            lines.append(f"  … and {diff['more']:,} more differing traces (--diff-limit)")
    return "\n".join(lines) + "\n"
