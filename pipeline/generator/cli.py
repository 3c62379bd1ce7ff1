"""tailsift generate: produce a realistic stream of traces (span batches) to Kafka."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "spans.raw"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        default=None,
        help=f"Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else {DEFAULT_BOOTSTRAP})",
    )
    kafka.add_argument(
        "--topic", default=None, help=f"topic to write span batches to; it must exist (default: {DEFAULT_TOPIC})"
    )

    how_much = parser.add_argument_group("how much")
    amount = how_much.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        "-n",
        type=_positive_int,
        metavar="N",
        help="stop after N traces (default, with neither --count nor --duration: run until Ctrl-C)",
    )
    amount.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds of wall-clock time")
    how_much.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="traces per second, paced by sleeping (default: as fast as possible; one core "
        "does about a thousand traces/s, ~19 spans and ~6 messages each)",
    )

    model = parser.add_argument_group("trace model")
    model.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed: the same seed and the same timestamps give byte-identical messages (default: 1)",
    )
    model.add_argument(
        "--error-rate",
        type=_fraction,
        default=0.05,
        metavar="F",
        help="fraction of traces with one injected error (ERROR status, exception event, "
        "propagated to callers unless they degrade gracefully) (default: 0.05)",
    )
    model.add_argument(
        "--slow-rate",
        type=_fraction,
        default=0.02,
        metavar="F",
        help="fraction of traces in which one operation is 10-50x slower than usual (default: 0.02)",
    )
    model.add_argument(
        "--queue-delay-ms",
        type=float,
        default=200.0,
        metavar="MS",
        help="mean queueing delay before the async e-mail worker consumes an order (exponential; default: 200)",
    )
    model.add_argument(
        "--realtime",
        action="store_true",
        help="hold each batch until its simulated exporter flush time, so late spans (async "
        "consumers, slow calls) also arrive late on the wire",
    )

    out = parser.add_argument_group("output")
    shown = out.add_mutually_exclusive_group()
    shown.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is shown only when stdout is a terminal anyway)"
    )
    shown.add_argument(
        "--progress", action="store_true", help="show the progress bar even when stdout is not a terminal"
    )


def resolve_bootstrap(args: argparse.Namespace) -> str:
    return getattr(args, "bootstrap", None) or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def resolve_topic(args: argparse.Namespace) -> str:
    return getattr(args, "topic", None) or DEFAULT_TOPIC


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from pipeline.generator.callgraph import GeneratorConfig
    from pipeline.generator.produce import produce

    config = GeneratorConfig(
        seed=args.seed, error_rate=args.error_rate, slow_rate=args.slow_rate, queue_delay_ms=args.queue_delay_ms
    )
    progress: bool | str = "force" if getattr(args, "progress", False) else not getattr(args, "no_progress", False)
    bootstrap, topic = resolve_bootstrap(args), resolve_topic(args)
    try:
        stats = produce(
            bootstrap,
            topic,
            count=args.count,
            duration_s=args.duration,
            rate=args.rate,
            config=config,
            progress=progress,
            realtime=getattr(args, "realtime", False),
        )
    except KafkaException as exc:
        print(f"tailsift generate: producing to {topic} on {bootstrap} failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"generated {stats.traces:,} traces, {stats.spans:,} spans, {stats.messages:,} "
        f"messages, {stats.bytes / 1e6:.1f} MB in {stats.seconds:.1f} s "
        f"({stats.traces_per_s:,.0f} traces/s) -> {topic}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:  # for `python -m pipeline.generator.cli`
    parser = argparse.ArgumentParser(prog="tailsift generate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
