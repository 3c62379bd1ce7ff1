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


def _families():
    """The job's registry (pipeline.metrics, plus the process_/python_ collectors) and the
    aggregation stage's own (pipeline.aggregate.metrics: merged windows, SLO status)."""
    from prometheus_client import REGISTRY

    import pipeline.metrics  # noqa: F401 - registers the job's metrics
    from pipeline.aggregate.metrics import registry
    from pipeline.aggregate.slo_book import SloBook

    yield from REGISTRY.collect()
    yield from registry([], SloBook([])).collect()


def exposed_names() -> set[str]:
    """Every series name a /metrics (worker or aggregation stage) can show, expanded by type — a
    labelled metric with no children yet has no samples, so samples alone would miss it."""
    names: set[str] = set()
    for family in _families():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def registered_metrics() -> set[str]:
    """The canonical name of every tailsift metric (``tailsift_…_total`` for a counter, the family
    name for a gauge or histogram) of the job and the aggregation stage."""
    return {
        family.name + _CANONICAL.get(family.type, "") for family in _families() if family.name.startswith("tailsift_")
    }
