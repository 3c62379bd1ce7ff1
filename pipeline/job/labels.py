"""Prometheus label children looked up once per label values.

``metric.labels(...)`` takes a lock and builds its key on every call (~1–2 µs); the job called it
per decided trace (decision, trigger) and per emitted SLI window (service, kind, status).
``Children(metric)(*values)`` returns the same child from a plain dict. The values are bounded by
the config (policy names, triggers, reasons, ``sli.max_services``); past ``MAX_CACHED`` children
it stops caching rather than grow."""

from __future__ import annotations

from typing import Any

MAX_CACHED = 10_000


class Children:
    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Any):
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._metric.labels(*values)
            if len(self._children) < MAX_CACHED:
                self._children[values] = child
        return child
