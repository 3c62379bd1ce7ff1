"""The metric names the job exports, as /metrics shows them (for tests that compare docs and
deploy files with the code)."""

from __future__ import annotations

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
# The name a reader looks for: counters by their _total series, other types by the family name.
_CANONICAL = {"counter": "_total", "info": "_info"}


def exposed_names() -> set[str]:
    """Every series name /metrics can show: the families in prometheus_client's default registry
    (tailsift's metrics from pipeline.metrics, plus the process_/python_ collectors), expanded by
    type — a labelled metric with no children yet has no samples, so samples alone would miss it."""
    from prometheus_client import REGISTRY

    import pipeline.metrics  # noqa: F401 - registers the job's metrics

    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def registered_metrics() -> set[str]:
    """The canonical name of every metric ``pipeline.metrics`` registers (``tailsift_…_total`` for
    a counter, the family name for a gauge or histogram)."""
    from prometheus_client import REGISTRY

    import pipeline.metrics  # noqa: F401 - registers the job's metrics

    return {
        family.name + _CANONICAL.get(family.type, "")
        for family in REGISTRY.collect()
        if family.name.startswith("tailsift_")
    }
