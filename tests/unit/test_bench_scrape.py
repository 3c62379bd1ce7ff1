"""``tailsift bench`` scrapes the job's /metrics to time its drain; each scrape costs the job CPU
that the bench counted as the job's (py-spy: ~10 % of it at a fixed 4 Hz). The scrape interval
now follows the drain: fine at the start and near the end (the timing stays as exact), sparse in
between."""

from pipeline.bench import next_scrape


def test_scrapes_every_quarter_second_until_the_drain_has_a_rate():
    assert next_scrape(None, 10.0, 0, 1_000) == 0.25
    assert next_scrape((10.0, 50), 10.0, 50, 1_000) == 0.25  # no time passed yet
    assert next_scrape((10.0, 50), 11.0, 50, 1_000) == 0.25  # nothing ingested since


def test_in_between_it_waits_half_the_time_left_at_most_five_seconds():
    # 100 spans/s, 900 left: 9 s left → 4.5 s
    assert next_scrape((10.0, 0), 11.0, 100, 1_000) == 4.5
    assert next_scrape((10.0, 0), 11.0, 100, 100_000) == 5.0
    # near the end: back to 0.25 s, as finely as the fixed interval timed it
    assert next_scrape((10.0, 0), 19.9, 990, 1_000) == 0.25


def test_a_whole_drain_takes_few_scrapes():
    """Simulated 20 s drain at a steady rate: a fixed 4 Hz took 80 scrapes."""
    spans, rate, t, first, scrapes = 200_000, 10_000.0, 0.0, None, 0
    while True:
        ingested = min(spans, rate * t)
        scrapes += 1
        if first is None and ingested > 0:
            first = (t, ingested)
        if ingested >= spans:
            break
        t += next_scrape(first, t, ingested, spans)
    assert scrapes <= 20 and t <= 20.25


class _Worker:
    """A JobProcess as wait_all_ingesting reads it: its ingested spans, scrape after scrape."""

    def __init__(self, *counts: float):
        self.counts = list(counts)

    def metric(self, name: str) -> float:
        assert name == "tailsift_spans_ingested_total"
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]


def test_the_two_worker_clock_waits_for_the_restoring_worker():
    from pipeline.bench import wait_all_ingesting

    first, restoring = _Worker(500, 900, 1_300), _Worker(0, 0, 40)
    wait_all_ingesting([first, restoring], spans=10_000)
    assert (first.counts, restoring.counts) == ([1_300], [40])  # returned at the third scrape


def test_a_worker_that_never_takes_input_is_an_error_not_a_figure():
    import pytest

    from pipeline.bench import wait_all_ingesting

    with pytest.raises(RuntimeError, match="not every worker took input"):
        wait_all_ingesting([_Worker(4_000, 10_000), _Worker(0)], spans=10_000)
