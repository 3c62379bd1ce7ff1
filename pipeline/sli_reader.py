"""``tailsift sli``: read ``sli.windows``, merge the partials into exact totals, print a table.

Every ``SliWindow`` record is a partial of one (service, operation, kind, status, window): from one
worker, possibly several input partitions, possibly a straggler emitted after the window closed.
Merging = sum the counts, combine min/max/sum, merge the DDSketches (``operators.sli_merge``;
sketches of different ``sli.relative_accuracy`` merge into the coarser one, and the command says so).
``--by`` chooses the rows: per service, per (service, operation), per (service, operation, kind,
status), optionally per window (``--per-window``). ``--json`` prints the rows as JSON lines.

``--source auto`` (the default) reads ``sli.merged`` when the aggregation stage has written to it:
the same totals from one record per complete window instead of one per worker flush. Windows the
stage still holds open (within ``aggregate.grace_seconds`` of now) are not in it yet:
``--source partials`` reads every partial up to the workers' newest flush.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from operators.sli import WindowAggregate
from operators.sli_merge import WindowKey, merge_records, roll_up

if TYPE_CHECKING:  # the CLI imports this module to build its parser: keep Kafka/Avro lazy
    from pipeline.config import Config

_BY = {
    "service": (("service",), lambda k: k[:1]),
    "operation": (("service", "operation"), lambda k: k[:2]),
    "full": (("service", "operation", "kind", "status"), lambda k: k[:4]),
}


def merged_available(config: Config, timeout: float = 10.0) -> bool:
    """``sli_merged`` exists and holds records: the aggregation stage is (or was) running."""
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.kafka import clients

    c = Consumer({**clients.connection(config.kafka), "group.id": "tailsift-readback"})
    try:
        topic = config.topics.sli_merged.name
        meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return False
        for p in meta.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                return True
        return False
    finally:
        c.close()


def read_windows(config: Config, timeout: float = 10.0, source: str = "partials") -> dict[WindowKey, WindowAggregate]:
    """``source``: ``partials`` (sli_windows, every worker's partials, up to the newest flush) or
    ``merged`` (sli_merged, the aggregation stage's complete windows; a window's late records are
    further partials of it, so the same merge applies)."""
    from pipeline.codecs import avro
    from pipeline.readback import read_all

    topic = config.topics.sli_merged.name if source == "merged" else config.topics.sli_windows.name
    values = (v for _, _, _, v in read_all(config.kafka.bootstrap_servers, topic, timeout) if v)
    return merge_records(avro.decode(avro.SLI_WINDOW, v) for v in values)


def rows(
    windows: dict[WindowKey, WindowAggregate], by: str = "operation", per_window: bool = False
) -> tuple[list[str], list[tuple[tuple, WindowAggregate]]]:
    cols, key = _BY[by]
    if per_window:
        cols = cols + ("window_start",)
        base = key
        key = lambda k: base(k) + (k[4],)  # noqa: E731
    merged = roll_up(windows, key)
    return list(cols), sorted(merged.items())


def as_dicts(cols: list[str], table: Iterable[tuple[tuple, WindowAggregate]]) -> list[dict]:
    out = []
    for key, m in table:
        d = dict(zip(cols, key))
        d.update(
            spans=m.span_count,
            errors=m.error_count,
            roots=m.root_count,
            error_ratio=round(m.error_ratio, 6),
            min_ms=m.min_ms if m.span_count else 0.0,
            p50_ms=m.quantile(0.5),
            p90_ms=m.quantile(0.9),
            p95_ms=m.quantile(0.95),
            p99_ms=m.quantile(0.99),
            max_ms=m.max_ms,
            partials=m.partials,
            quantile_accuracy=m.quantile_accuracy,
        )
        out.append(d)
    return out


def render(cols: list[str], table: list[tuple[tuple, WindowAggregate]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    t = Table(title="SLIs (every span, before sampling; partials merged)")
    for c in cols:
        t.add_column(c)
    for c in ("spans", "errors", "error %", "p50 ms", "p90 ms", "p99 ms", "max ms", "partials"):
        t.add_column(c, justify="right")
    for key, m in table:
        t.add_row(
            *(str(k) for k in key),
            f"{m.span_count:,}",
            f"{m.error_count:,}",
            f"{100 * m.error_ratio:.2f}",
            f"{m.quantile(0.5):.2f}",
            f"{m.quantile(0.9):.2f}",
            f"{m.quantile(0.99):.2f}",
            f"{m.max_ms:.2f}",
            str(m.partials),
        )
    console.print(t)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--by", choices=sorted(_BY), default="operation", help="row granularity (default: operation)")
    p.add_argument("--per-window", action="store_true", help="one row per window as well")
    p.add_argument("--service", default=None, help="only this service")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the end of the topic")
    p.add_argument(
        "--source",
        choices=["auto", "merged", "partials"],
        default="auto",
        help="merged: sli.merged (complete windows from `tailsift aggregate`, far fewer records); partials: "
        "sli.windows (up to the newest worker flush); auto (default): merged when it holds records",
    )


def main(config: Config, args: argparse.Namespace) -> int:
    source = getattr(args, "source", "partials")
    if source == "auto":
        source = "merged" if merged_available(config, args.timeout) else "partials"
    if source == "merged":
        print(f"tailsift sli: reading {config.topics.sli_merged.name} (merged windows)", file=sys.stderr)
        windows = read_windows(config, args.timeout, source)
    else:
        windows = read_windows(config, args.timeout)
    if args.service:
        windows = {k: v for k, v in windows.items() if k[0] == args.service}
    cols, table = rows(windows, args.by, args.per_window)
    mixed = sorted({a for _, m in table if len(m.accuracies) > 1 for a in m.accuracies})
    if mixed:
        worst = max(m.quantile_accuracy for _, m in table)
        print(
            "tailsift sli: note: partials with sketches of different sli.relative_accuracy "
            f"({', '.join(f'{a:g}' for a in mixed)}) were merged into the coarser one; quantiles of those rows "
            f"are within ±{100 * worst:.2f} % (quantile_accuracy in --json), the others within their own",
            file=sys.stderr,
        )
    if args.json:
        for d in as_dicts(cols, table):
            print(json.dumps(d))
    else:
        render(cols, table)
    return 0


def bench_sli(traces: int = 3_000, seed: int = 5, rounds: int = 5, out=print) -> dict[str, float]:
    """The SLI operator's cost per span (one core, no Kafka): ``SliWindows.add`` over generated
    traffic (≈ 3 spans per message, 6 partitions, a commit hold per message, as the job calls it),
    best of ``rounds``; and emission (``due`` + the Avro record) per window."""
    import time

    from operators.sli import SliWindows, window_record
    from pipeline.codecs import avro
    from pipeline.generator import GeneratorConfig, TraceGenerator

    gen = TraceGenerator(GeneratorConfig(seed=seed))
    messages = []
    t0 = 1_700_000_000 * 10**9
    for i in range(traces):
        for value in gen.trace(t0 + i * 5_000_000).encoded:
            b = avro.decode_batch(value)
            messages.append((i % 6, b["service"], b["spans"]))
    n = sum(len(m[2]) for m in messages)
    best_add = best_emit = float("inf")
    windows = 0
    for _ in range(rounds):
        w = SliWindows(10 * 10**9, 5 * 10**9)
        start = time.perf_counter()
        for partition, service, spans in messages:
            w.add(partition, service, spans, object())
        best_add = min(best_add, time.perf_counter() - start)
        start = time.perf_counter()
        emitted = w.due(0, flush_all=True)
        for agg in emitted:
            avro.encode(avro.SLI_WINDOW, window_record(agg, "bench", 0))
        windows = len(emitted)
        best_emit = min(best_emit, time.perf_counter() - start)
    figures = {
        "add_us_per_span": 1e6 * best_add / n,
        "emit_us_per_window": 1e6 * best_emit / max(windows, 1),
        "emit_us_per_span": 1e6 * best_emit / n,
        "spans": n,
        "windows": windows,
    }
    if out:
        out(
            f"SliWindows.add: {figures['add_us_per_span']:.2f} µs per span ({n:,} spans, {len(messages):,} messages); "
            f"emission: {figures['emit_us_per_window']:.0f} µs per window record ({windows} windows per "
            f"(service, operation, kind, status), {figures['emit_us_per_span']:.2f} µs per span)"
        )
    return figures
