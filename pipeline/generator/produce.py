"""Write generated traces to a Kafka topic (the Kafka side of ``tailsift generate``).

One message per batch: key = the 16 trace-ID bytes, value = the schemaless-Avro ``SpanBatch``
(``GeneratedTrace.encoded``). Keys are hashed with murmur2 like the Java client, so every batch
of a trace lands in the same partition whichever client produced it.

Pacing is by absolute schedule (trace i is due at t0 + i/rate) with sleeps, so the rate does not
drift and the CPU is idle between traces. Trace timestamps come from ``clock()`` at the moment
the trace is generated, so a live job sees "now"; pass a fake clock for byte-reproducible runs.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaException, Producer

from pipeline.generator.callgraph import GeneratedTrace, GeneratorConfig, TraceGenerator
from pipeline.kafka import clients

# Compression measured on the 2-core dev machine, local broker, 20K traces as fast as possible
# (118K messages, 184 MB of keys+values): none 185 MB of log segments, lz4 44 MB (4.2x smaller,
# 2% slower wall clock, ~10% more producer CPU: the generator is the bottleneck, ~3K traces/s
# either way, with the generator's former hand-written Avro encoder), zstd 35 MB but ~20% slower. lz4 it is.
DEFAULT_PRODUCER_CONFIG: dict = {
    "linger.ms": 20,
    "batch.size": 1_000_000,  # bytes per partition batch (librdkafka's default, explicit)
    "batch.num.messages": 10_000,
    "compression.type": "lz4",
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",  # same partition for a key as Java producers
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 256 * 1024,
    "message.timeout.ms": 120_000,
}


@dataclass
class ProduceStats:
    traces: int = 0
    spans: int = 0
    messages: int = 0
    bytes: int = 0  # key + value bytes handed to the producer
    errors_traces: int = 0  # traces with an ERROR span
    seconds: float = 0.0

    @property
    def traces_per_s(self) -> float:
        return self.traces / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.traces:,} traces, {self.spans:,} spans, {self.messages:,} messages, "
            f"{self.bytes / 1e6:.2f} MB in {self.seconds:.2f} s "
            f"({self.traces_per_s:,.0f} traces/s, {self.errors_traces:,} with errors)"
        )


class DeliveryError(KafkaException):
    """Some messages were not delivered (``errors`` holds the first few reasons)."""

    def __init__(self, failed: int, errors: list):
        self.failed = failed
        self.errors = errors
        super().__init__(f"{failed} message(s) not delivered; first errors: " + "; ".join(str(e) for e in errors[:5]))


class TopicMissing(KafkaException):
    pass


def _check_topic(producer: Producer, topic: str, timeout_s: float) -> None:
    """Fail fast (instead of after message.timeout.ms) on a bad bootstrap or a missing topic."""
    from confluent_kafka import KafkaError

    md = producer.list_topics(topic, timeout=timeout_s)  # raises KafkaException if unreachable
    t = md.topics.get(topic)
    if t is None or (t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise TopicMissing(f"topic {topic!r} does not exist (create it first)")


def _show_progress(progress: bool | str) -> bool:
    if progress == "force" or progress == "always":
        return True
    if not progress:
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def produce(
    bootstrap: str,
    topic: str,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    config: GeneratorConfig | None = None,
    progress: bool | str = True,
    on_trace: Callable[[GeneratedTrace], None] | None = None,
    clock: Callable[[], int] = time.time_ns,
    realtime: bool = False,
    producer_config: dict | None = None,
    flush_timeout_s: float = 120.0,
    clock_skew_ms: int = 0,
) -> ProduceStats:
    """Generate traces and produce their batches to ``topic``.

    Stops after ``count`` traces or ``duration_s`` seconds, whichever comes first (neither: until
    KeyboardInterrupt, which ends the run normally). ``rate`` is traces/s (None: as fast as
    possible). ``progress``: a rich progress bar when stdout is a terminal; ``"force"`` shows it
    anyway. ``on_trace`` sees every trace after its batches are handed to the producer.
    ``realtime``: hold each batch until its simulated exporter flush time (spans' end plus the
    service's flush timer), so late spans (async consumers, slow calls) also arrive late on the
    wire; needs the real clock. Raises ``DeliveryError`` if any message fails delivery.
    """
    if count is not None and count < 0:
        raise ValueError("count must be >= 0")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 (None = as fast as possible)")
    if duration_s is not None and duration_s < 0:
        raise ValueError("duration_s must be >= 0")
    config = config or GeneratorConfig()
    gen = TraceGenerator(config)
    conf = dict(DEFAULT_PRODUCER_CONFIG)
    conf.update(producer_config or {})
    conf.update(clients.connection(bootstrap))

    failed: list = []
    n_failed = 0

    def on_delivery(err, _msg):
        nonlocal n_failed
        if err is not None:
            n_failed += 1
            if len(failed) < 20:
                failed.append(err)

    producer = Producer(conf)
    _check_topic(producer, topic, timeout_s=15.0)
    stats = ProduceStats()
    pending: list = []  # realtime: heap of (due_ns, seq, value)
    seq = 0

    def send(key: bytes, value: bytes) -> None:
        # clock_skew_ms: message timestamps as a producer whose clock is off by that much would set
        extra = {"timestamp": int(time.time() * 1000) + clock_skew_ms} if clock_skew_ms else {}
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery, **extra)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                producer.poll(0.05)

    def release_due(now_ns: int) -> None:
        while pending and pending[0][0] <= now_ns:
            _, _, key, value = heapq.heappop(pending)
            send(key, value)

    show = _show_progress(progress)
    bar = None
    task = None
    if show:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("[bold]generate[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[spans]:,} spans  {task.fields[rate]:,.0f} traces/s"),
            TimeElapsedColumn(),
        ]
        if count is not None or duration_s is not None:
            columns.append(TimeRemainingColumn())
        bar = Progress(*columns, transient=False, refresh_per_second=4)
        total = count if count is not None else None
        task = bar.add_task("generate", total=total, spans=0, rate=0.0)
        bar.start()

    mono = time.monotonic
    t0 = mono()
    deadline = t0 + duration_s if duration_s is not None else math.inf
    interval = 1.0 / rate if rate else 0.0
    next_poll = 0
    last_bar = t0
    try:
        i = 0
        while count is None or i < count:
            now = mono()
            if now >= deadline:
                break
            if interval:
                due = t0 + i * interval
                if due > now:
                    _wait(producer, min(due, deadline), mono, pending, clock, release_due)
                    if mono() >= deadline:
                        break
            tr = gen.trace(clock())
            key = tr.trace_id
            if realtime:
                for value, at in zip(tr.encoded, tr.export_ns):
                    seq += 1
                    heapq.heappush(pending, (at, seq, key, value))
                release_due(clock())
            else:
                for value in tr.encoded:
                    send(key, value)
            stats.traces += 1
            stats.spans += tr.span_count
            stats.messages += len(tr.encoded)
            stats.bytes += sum(map(len, tr.encoded)) + 16 * len(tr.encoded)
            if tr.has_error:
                stats.errors_traces += 1
            if on_trace is not None:
                on_trace(tr)
            i += 1
            if i >= next_poll:
                producer.poll(0)  # serve delivery callbacks
                next_poll = i + 50
            if bar is not None:
                now = mono()
                if now - last_bar >= 0.25:
                    last_bar = now
                    bar.update(task, completed=stats.traces, spans=stats.spans, rate=stats.traces / max(now - t0, 1e-9))
        # realtime: wait for the last batches' flush times (bounded by how late they are)
        while pending:
            wait_s = (pending[0][0] - clock()) / 1e9
            if wait_s > 0:
                producer.poll(min(wait_s, 0.1))
            release_due(clock())
    except KeyboardInterrupt:
        for _, _, key, value in sorted(pending):
            send(key, value)
        pending.clear()
    finally:
        stats.seconds = mono() - t0
        if bar is not None:
            bar.update(task, completed=stats.traces, spans=stats.spans, rate=stats.traces_per_s)
            bar.stop()
    remaining = producer.flush(flush_timeout_s)
    stats.seconds = mono() - t0
    if remaining:
        raise DeliveryError(
            remaining + n_failed, failed or [f"{remaining} still queued after flush({flush_timeout_s}s)"]
        )
    if n_failed:
        raise DeliveryError(n_failed, failed)
    return stats


def _wait(producer, until: float, mono, pending, clock, release_due) -> None:
    """Sleep until ``until`` (monotonic s), serving delivery callbacks and due batches."""
    while True:
        left = until - mono()
        if left <= 0:
            return
        if pending:
            left = min(left, max((pending[0][0] - clock()) / 1e9, 0.0))
        if left > 0.002:
            producer.poll(min(left, 0.1))  # poll() sleeps when nothing is ready
        elif left > 0:
            time.sleep(left)
        if pending:
            release_due(clock())
