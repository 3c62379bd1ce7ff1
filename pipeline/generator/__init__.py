"""The trace generator (``tailsift generate``): load source of tests, demo and benchmarks.

``pipeline.generator.callgraph`` is the pure, seeded model (no Kafka); its API is re-exported
here. ``pipeline.generator.produce.produce`` writes the traces to a topic (imported on demand:
it needs confluent_kafka), ``pipeline.generator.cli`` is the ``tailsift generate`` subcommand.
"""

from __future__ import annotations

from pipeline.generator.callgraph import (
    SERVICES,
    GeneratedTrace,
    GeneratorConfig,
    TraceGenerator,
    luhn_valid,
)

__all__ = [
    "SERVICES",
    "GeneratedTrace",
    "GeneratorConfig",
    "TraceGenerator",
    "luhn_valid",
]
