"""What the job wrote, read back from the real broker (read_committed), and the exactness checks
the integration tests share: every kept span exactly once, kept traces whole, SLI counts exact.

The read-back lives in ``pipeline.chaos.verify`` so the integration tests and the chaos suite
(``tailsift chaos``) judge the job with one implementation; these are the tests' config-shaped
wrappers and assertions."""

from __future__ import annotations

from collections import Counter, defaultdict

from pipeline.chaos import verify
from pipeline.chaos.verify import record_span_ids

__all__ = [
    "assert_kept_exactly_once_and_whole",
    "assert_sli_exact",
    "committed_to_end",
    "generated_span_ids",
    "kept_records",
    "kept_span_occurrences",
    "record_span_ids",
    "sli_totals",
    "wait_committed",
]


def kept_records(cfg, timeout: float = 60) -> list[dict]:
    return verify.kept_records(cfg.kafka.bootstrap_servers, cfg.topics.traces_kept.name, timeout)


def kept_span_occurrences(cfg):
    """(trace ID, span ID) → how many times the span appears in traces.kept."""
    return verify.kept_span_occurrences(cfg.kafka.bootstrap_servers, cfg.topics.traces_kept.name)


def generated_span_ids(trace) -> set[bytes]:
    return {s["span_id"] for b in trace.batches for s in b["spans"]}


def sli_totals(cfg):
    """Span and error counts per service, summed over every SliWindow partial."""
    return verify.sli_totals(cfg.kafka.bootstrap_servers, cfg.topics.sli_windows.name, timeout=60)


def _input(cfg) -> tuple[str, str, str, int]:
    t = cfg.topics.spans_raw
    return cfg.kafka.bootstrap_servers, cfg.kafka.group_id, t.name, t.partitions


def committed_to_end(cfg) -> bool:
    """Every input record is behind the group's committed offsets (transaction markers aside)."""
    return verify.group_lag(*_input(cfg)) == 0


def wait_committed(cfg, timeout: float = 180.0) -> None:
    verify.wait_committed(*_input(cfg), timeout=timeout)


def assert_kept_exactly_once_and_whole(
    cfg, traces, min_errors: int, errors_kept: bool = True
) -> dict[bytes, set[bytes]]:
    """Every span of every kept trace is in traces.kept exactly once and every kept trace is whole
    (late records included); with ``errors_kept``, every error trace (at least ``min_errors``) is
    kept. Returns trace ID → kept span IDs."""
    seen = kept_span_occurrences(cfg)
    assert seen and max(seen.values()) == 1, f"{sum(n > 1 for n in seen.values())} spans emitted twice"
    kept: dict[bytes, set[bytes]] = defaultdict(set)
    for trace_id, span_id in seen:
        kept[trace_id].add(span_id)
    errors = [t for t in traces if t.has_error]
    assert len(errors) >= min_errors
    for t in errors if errors_kept else ():
        assert kept.get(t.trace_id) == generated_span_ids(t), "an error trace is missing or incomplete"
    for t in traces:
        if t.trace_id in kept:
            assert kept[t.trace_id] == generated_span_ids(t), "a kept trace is incomplete"
    return kept


def assert_sli_exact(cfg, traces) -> None:
    """Merged SLI span and error counts per service equal what the generator produced."""
    spans, errs = sli_totals(cfg)
    want_spans, want_errors = Counter(), Counter()
    for t in traces:
        want_spans.update(t.spans_by_service)
        want_errors.update(t.errors_by_service)
    assert spans == want_spans and errs == +want_errors
