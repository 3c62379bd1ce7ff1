"""What the job wrote, read back from the real broker (read_committed), and the exactness checks
the integration tests share: every kept span exactly once, kept traces whole, SLI counts exact."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.codecs import avro
from pipeline.readback import read_all


def kept_records(cfg, timeout: float = 60) -> list[dict]:
    out = []
    for _, _, key, value in read_all(cfg.kafka.bootstrap_servers, cfg.topics.traces_kept.name, timeout=timeout):
        trace = avro.decode(avro.KEPT_TRACE, value)
        assert key == trace["trace_id"]
        out.append(trace)
    return out


def record_span_ids(trace: dict) -> list[bytes]:
    return [s["span_id"] for b in trace["batches"] for s in b["spans"]]


def kept_span_occurrences(cfg) -> Counter:
    """(trace ID, span ID) → how many times the span appears in traces.kept."""
    seen: Counter = Counter()
    for trace in kept_records(cfg):
        for span_id in record_span_ids(trace):
            seen[(trace["trace_id"], span_id)] += 1
    return seen


def generated_span_ids(trace) -> set[bytes]:
    return {s["span_id"] for b in trace.batches for s in b["spans"]}


def sli_totals(cfg) -> tuple[Counter, Counter]:
    """Span and error counts per service, summed over every SliWindow partial."""
    spans, errors = Counter(), Counter()
    for _, _, _, value in read_all(cfg.kafka.bootstrap_servers, cfg.topics.sli_windows.name, timeout=60):
        w = avro.decode(avro.SLI_WINDOW, value)
        spans[w["service"]] += w["span_count"]
        errors[w["service"]] += w["error_count"]
    return spans, errors


def committed_to_end(cfg) -> bool:
    c = Consumer(
        {"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": cfg.kafka.group_id, "enable.auto.commit": False}
    )
    try:
        topic = cfg.topics.spans_raw.name
        try:
            tps = c.committed([TopicPartition(topic, p) for p in range(cfg.topics.spans_raw.partitions)], timeout=10)
        except KafkaException:
            # offsets in an open transaction (a killed worker's, until transaction_timeout_ms aborts
            # it) are "unstable": the broker answers only once the transaction is over
            return False
        for tp in tps:
            high = c.get_watermark_offsets(tp, timeout=10)[1]
            if not (tp.offset == high or (tp.offset < 0 and high == 0)):
                return False
        return True
    finally:
        c.close()


def wait_committed(cfg, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if committed_to_end(cfg):
            return
        time.sleep(0.5)
    raise AssertionError(f"input offsets were not all committed within {timeout:.0f} s")


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
