"""Merging ``SliWindow`` partials into exact totals (pure; used by ``tailsift sli`` and tests).

Records with the same (service, operation, span kind, status, window start, window end) are
partials of one window — from different workers, different input partitions, or spans that
arrived after a window was emitted. Their counts and sums add, min/max combine, and their DDSketches
merge exactly (same relative accuracy ⇒ same bins), so the merged quantiles carry the same ≤ α
relative-error guarantee as one sketch over all the spans. Rolling up further (all windows, all
operations of a service) is the same operation on a coarser key.

Partials whose sketches have different relative accuracies (``sli.relative_accuracy`` changed
between runs, or workers configured differently) are merged too: the finer sketch's bins are
re-binned into the coarser one, so the merged quantiles are within α_c + α_f + α_c·α_f (α_c the
coarsest, α_f the next accuracy) instead of α — ``WindowAggregate.quantile_accuracy`` says which,
and ``tailsift sli`` says so when it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from operators.sli import WindowAggregate

WindowKey = tuple[str, str, str, str, int, int]  # service, operation, kind, status, start, end


def window_key(record: dict) -> WindowKey:
    return (
        record["service"],
        record["operation"],
        record["span_kind"],
        record.get("status", "*"),
        record["window_start_unix_nano"],
        record["window_end_unix_nano"],
    )


def merge_records(records: Iterable[dict]) -> dict[WindowKey, WindowAggregate]:
    """Decoded ``SliWindow`` records → one exact aggregate per window key."""
    out: dict[WindowKey, WindowAggregate] = {}
    for r in records:
        key = window_key(r)
        partial = WindowAggregate.from_record(r)
        m = out.get(key)
        if m is None:
            out[key] = partial
        else:
            m.merge(partial)
    return out


def roll_up(
    windows: dict[WindowKey, WindowAggregate], by: Callable[[WindowKey], tuple]
) -> dict[tuple, WindowAggregate]:
    """Coarser totals, e.g. ``by=lambda k: k[:1]`` per service over all windows and operations
    (the inputs are not changed)."""
    out: dict[tuple, WindowAggregate] = {}
    for key, w in windows.items():
        k = by(key)
        m = out.get(k)
        if m is None:
            m = out[k] = w.empty_like()
        m.merge(w)
    return out
