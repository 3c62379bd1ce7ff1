"""The ``tailsift`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from pipeline import config as config_mod
from pipeline.kafka.security import KafkaSecurityError

DESCRIPTION = """\
tailsift: Kafka-native tail sampling for distributed traces.

Consumes span batches from Kafka, groups them by trace ID, keeps the traces worth debugging
(errors, slow traces, a consistent probabilistic share) and writes them to traces.kept, with exact
pre-sampling per-service SLI windows to sli.windows. See README.md for the configuration reference.
"""


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "-c",
        "--config",
        required=required,
        metavar="FILE",
        help="YAML config file (see README 'Configuration'); KAFKA_BOOTSTRAP_SERVERS overrides kafka.bootstrap_servers",
    )


def _load(path: str | None) -> config_mod.Config:
    from pipeline.kafka import clients

    cfg = config_mod.load(path) if path else config_mod.parse({}, "<defaults>")
    # tools handed only an address (generator, readback) connect with this config's security settings
    clients.use_security(cfg.kafka)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import app
    from pipeline.metrics import MetricsPortInUse
    from pipeline.privacy import PrivacyKeyError

    cfg = _load(args.config)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return app.run(cfg, loglevel=args.log_level)
    except (app.TopicsMissing, PrivacyKeyError, MetricsPortInUse) as exc:
        print(f"tailsift run: {exc}", file=sys.stderr)
        return 2


def cmd_aggregate(args: argparse.Namespace) -> int:
    from pipeline.aggregate import app as aggregate_app

    cfg = _load(args.config)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return aggregate_app.run(cfg, loglevel=args.log_level)
    except aggregate_app.TopicsMissing as exc:
        print(f"tailsift aggregate: {exc}", file=sys.stderr)
        return 2


def cmd_topics_create(args: argparse.Namespace) -> int:
    from pipeline.topics import create_topics

    cfg = _load(args.config)
    results = create_topics(cfg)
    failed = False
    for r in results:
        print(f"{r.status:8} topics.{r.key:12} {r.name}" + (f"  ({r.detail})" if r.detail else ""))
        failed |= r.status == "error"
    return 1 if failed else 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    import yaml

    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_config_import_collector(args: argparse.Namespace) -> int:
    from pipeline import collector_import

    return collector_import.main(args.file, sys.stdout, sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generator import cli as gen_cli

    if args.config:
        cfg = _load(args.config)
        args.bootstrap = args.bootstrap or cfg.kafka.bootstrap_servers
        args.topic = args.topic or cfg.topics.spans_raw.name
    return gen_cli.run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline import report

    return report.main(_load(args.config), args)


def cmd_capture(args: argparse.Namespace) -> int:
    from pipeline import capture

    cfg = _load(args.config)
    if args.bootstrap:
        cfg = cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update={"bootstrap_servers": args.bootstrap})})
    topic = args.topic or cfg.topics.spans_raw.name
    try:
        if (args.offsets or args.since) and (args.from_ms is not None or args.to_ms is not None):
            raise capture.CaptureError("--from-ms/--to-ms do not combine with --since or --offsets")
        if args.offsets:
            offsets, from_ms, to_ms, text = capture.parse_offsets(args.offsets), None, None, f"offsets {args.offsets}"
        elif args.since:
            offsets, to_ms = None, None
            from_ms = int(time.time() * 1000 - capture.parse_duration_s(args.since) * 1000)
            text = f"since {args.since} (from {from_ms} ms)"
        else:
            offsets, from_ms, to_ms = None, args.from_ms, args.to_ms
            if from_ms is None and to_ms is None:
                raise capture.CaptureError("give the range: --since, --from-ms/--to-ms or --offsets")
            if from_ms is not None and to_ms is not None and to_ms <= from_ms:
                raise capture.CaptureError("--to-ms must be later than --from-ms")
            text = f"from {from_ms} ms to {to_ms} ms"
        capture.capture(
            cfg.kafka,
            topic,
            args.out,
            max_bytes=args.max_bytes,
            from_ms=from_ms,
            to_ms=to_ms,
            offsets=offsets,
            range_text=text,
        )
    except capture.CaptureError as exc:
        print(f"tailsift capture: {exc}", file=sys.stderr)
        return 1 if "no messages" in str(exc) or "no committed" in str(exc) else 2
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.simulate import main as simulate_main

    return simulate_main.main(args)


def cmd_sli(args: argparse.Namespace) -> int:
    from pipeline import sli_reader

    return sli_reader.main(_load(args.config), args)


def cmd_slo(args: argparse.Namespace) -> int:
    from pipeline import slo_rules

    return slo_rules.main(_load(args.config), args)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline import demo

    return demo.main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline import bench

    return bench.main(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from pipeline.chaos import main as chaos_main

    return chaos_main.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailsift", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run one worker of the stream job (scale out by starting more in the same consumer group)",
        description="Run the tail-sampling worker. Stops gracefully on SIGTERM/SIGINT; "
        "buffered spans are uncommitted and are reread after a restart.",
    )
    _add_config(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "aggregate",
        help="run the aggregation stage: merge every worker's SLI partials into exact windows and SLO status",
        description="A Faust app: sli.windows partials → exact merged windows on sli.merged once complete, "
        "SLO status on slo.status, web views /sli, /slo, /healthz (aggregate.web_host/web_port). "
        "Scale out by starting more in the same group.",
    )
    _add_config(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("topics", help="manage the topics the config names")
    tsub = p.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    tp = tsub.add_parser("create", help="create every topic in the config's topics section (idempotent)")
    _add_config(tp)
    tp.set_defaults(func=cmd_topics_create)

    p = sub.add_parser("config", help="validate a config file")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cp = csub.add_parser("check", help="validate and print the effective config (defaults filled in)")
    _add_config(cp)
    cp.set_defaults(func=cmd_config_check)
    ip = csub.add_parser(
        "import-collector",
        help="translate an OTel Collector tail_sampling block into tailsift's sampling config",
        description="Print tailsift's sampling/assemble config for the tail_sampling processor in FILE (a "
        "Collector config, or the block alone) and, on stderr, what could not be translated (exit 1 then).",
    )
    ip.add_argument("file", metavar="FILE")
    ip.set_defaults(func=cmd_config_import_collector)

    from pipeline.generator import cli as gen_cli

    p = sub.add_parser(
        "generate",
        help="produce realistic multi-service traces to the input topic",
        description="Generate realistic traces (8 services, fan-out, queue hops, errors, slow tail, "
        "PII-looking attributes) and produce them keyed by trace ID.",
    )
    _add_config(p, required=False)
    gen_cli.add_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="summarise the output topics (kept traces by reason, SLI table, dead letters)")
    _add_config(p, required=False)
    p.add_argument(
        "--metrics-url",
        default=None,
        help="a running job's /metrics URL, for decided/ingested counts and the service graph",
    )
    p.add_argument(
        "--html",
        metavar="FILE",
        default=None,
        help="write a self-contained HTML report (charts, SLOs, service graph, example waterfalls), not the tables",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the end of each topic")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "capture",
        help="save a slice of the input topic to a local file (Avro container file) for `tailsift simulate`",
        description="Read the committed messages of every partition of the topic in a time or offset range "
        "and write them, with keys, partitions, offsets and timestamps (no headers), to an Avro Object "
        "Container File (schema schemas/captured_message.v1.avsc, embedded in the file). Progress on stderr. "
        "Exit 1: nothing in the range; 2: unusable arguments or topic.",
    )
    _add_config(p, required=False)
    p.add_argument("--topic", default=None, help="default: the config's topics.spans_raw")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the config's)")
    rng = p.add_mutually_exclusive_group()
    rng.add_argument("--since", default=None, metavar="DURATION", help="the last DURATION (e.g. 15m, 1h, 2d)")
    rng.add_argument(
        "--offsets", default=None, metavar="P:FROM-TO,...", help="offset ranges (FROM inclusive, TO exclusive)"
    )
    p.add_argument("--from-ms", type=int, default=None, help="start time, unix ms (message timestamps)")
    p.add_argument("--to-ms", type=int, default=None, help="end time, unix ms (exclusive)")
    p.add_argument("--out", required=True, metavar="FILE", help="the capture file to write")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=1 << 30,
        help="stop before the keys and values written pass this many bytes (default 1 GiB)",
    )
    p.set_defaults(func=cmd_capture)

    from pipeline.simulate.main import add_arguments as _simulate_arguments

    p = sub.add_parser(
        "simulate",
        help="what would this config keep? replay recorded input through the job core, in event time",
        description="Replay a capture file (or the last --since of a topic) through the real job core — "
        "decode, assemble, decide, protect — once per config, in the input's event time, writing nothing "
        "to Kafka; print what each config keeps (and, with --against, which traces differ). Same input, "
        "same output.",
    )
    _simulate_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sli", help="merge the SLI window partials on sli.windows into exact totals and print them")
    _add_config(p, required=False)
    from pipeline.sli_reader import add_arguments as _sli_arguments

    _sli_arguments(p)
    p.set_defaults(func=cmd_sli)

    p = sub.add_parser("slo", help="SLO tooling")
    ssub = p.add_subparsers(dest="slo_command", required=True, metavar="ACTION")
    sp = ssub.add_parser("rules", help="Prometheus alerting rules (multi-window burn rates) for the config's SLOs")
    _add_config(sp, required=True)
    sp.add_argument("-o", "--output", default="-", help="write the rule file here (default: stdout)")
    sp.set_defaults(func=cmd_slo)

    p = sub.add_parser("demo", help="end to end on the local broker: topics, job, ~30 s of traffic, summary")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of generated traffic (default 30)")
    p.add_argument("--rate", type=float, default=200.0, help="traces per second (default 200)")
    p.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting deploy/local/kafka")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="end-to-end throughput vs the bare consume+decode floor, in one run")
    p.add_argument("--traces", type=int, default=20_000, help="traces pre-filled into the bench topic")
    p.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting deploy/local/kafka")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config value of the benched job (repeatable; YAML value), e.g. assemble.group_read_time=false",
    )
    p.add_argument(
        "--worker-cpu",
        type=float,
        default=0.5,
        metavar="CORES",
        help="CPU budget per worker (CFS quota on a cgroup, as a Kubernetes CPU limit) for the one- vs "
        "two-worker scale-out runs; 0 skips them (default 0.5: two workers fit one core, the broker keeps the other)",
    )
    p.add_argument(
        "--keep-logs",
        default=None,
        metavar="DIR",
        help="keep each run's worker logs in DIR (e.g. the slow-commit lines behind a latency p99)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "chaos",
        help="the chaos, fuzz and overload suite: crash storm, zombie, fuzz, overload, PII canaries",
        description="Drive real workers and a real broker through a bad day and print the reliability "
        "figures; exit 1 when any figure misses its limit (README 'Guarantees').",
    )
    from pipeline.chaos.main import add_arguments as _chaos_arguments

    _chaos_arguments(p)
    p.set_defaults(func=cmd_chaos)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (config_mod.ConfigError, KafkaSecurityError) as exc:
        print(f"tailsift {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
