"""The job's SLI windows: ``operators.sli.SliWindows`` (the reference; ``job.core: python``) or its
native twin (``native/src/sli.rs``; ``job.core: native``), which counts every span in Rust and
builds each emitted partial's record and Avro bytes there too (README "Design")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ddsketch import DDSketch

from operators.sli import SliWindows
from pipeline.codecs import native


def sli_windows(
    core: str,
    window_ns: int,
    grace_ns: int,
    relative_accuracy: float,
    max_services: int,
    max_operations: int,
    sanitize: Callable[[str], str],
    service_label: Callable[[str], str] | None,
) -> Any:
    """The windows for ``core`` (native only when the extension is built)."""
    if core != "native" or not native.AVAILABLE:
        return SliWindows(window_ns, grace_ns, relative_accuracy, max_services, max_operations, sanitize, service_label)
    return native_sli_windows(
        window_ns, grace_ns, relative_accuracy, max_services, max_operations, sanitize, service_label
    )


def native_sli_windows(
    window_ns: int,
    grace_ns: int,
    relative_accuracy: float = 0.01,
    max_services: int = 1000,
    max_operations: int = 200,
    sanitize: Callable[[str], str] | None = None,
    service_label: Callable[[str], str] | None = None,
) -> Any:
    """The native ``SliWindows`` with the very key mapping of a Python ``DDSketch`` of this accuracy:
    its constants are read off the Python object, so both sides bin every latency alike."""
    from operators.privacy.sanitize import sanitize_span_name
    from pipeline import _native

    mapping = DDSketch(relative_accuracy)._mapping  # ddsketch pinned <4 (operators.sli.sketch_to_record)
    if type(mapping).__name__ != "LogarithmicMapping" or mapping._offset != 0:
        raise RuntimeError("ddsketch's default mapping changed: the native bins would disagree")
    return _native.SliWindows(
        window_ns,
        grace_ns,
        relative_accuracy,
        max_services,
        max_operations,
        sanitize or sanitize_span_name,
        service_label,
        mapping._multiplier,
        mapping.min_possible,
        2.0 / (1 + mapping.gamma),
    )
