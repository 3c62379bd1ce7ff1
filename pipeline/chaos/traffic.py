"""Good traffic with its ground truth: generated traces produced live at a steady rate, each
batch released at its simulated exporter flush time (so queue hops and slow calls arrive late on
the wire), some traces' batches bundled into unkeyed multi-trace OTLP requests, a few poison
messages mixed in — every one recorded in a ``Truth`` with the offset it was written at.

Runs in a thread; every loop is bounded by the trace count and a deadline."""

from __future__ import annotations

import heapq
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Producer

from pipeline.chaos import wire
from pipeline.chaos.truth import Send, Truth, digest
from pipeline.generator.callgraph import GeneratorConfig, TraceGenerator
from pipeline.kafka import clients

PRODUCER_CONFIG = {
    "linger.ms": 20,
    "compression.type": "lz4",
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",  # tailsift's partitioner for keyed messages
    # long enough to ride out a broker restart: the data waits in the producer, it is not lost
    "message.timeout.ms": 300_000,
    "queue.buffering.max.kbytes": 512 * 1024,
}


@dataclass
class TrafficPlan:
    traces: int
    rate: float  # traces per second
    fmt: str = "otlp_proto"  # the job's ingest format: avro | otlp_proto
    # every Nth trace is mis-partitioned, so the job must re-key it: OTLP — its batches go out in
    # unkeyed multi-trace requests (the Collector's default); Avro — keyed, on a random partition
    misroute_every: int = 5
    partitions: int = 12
    poison_every: int = 500  # one random-bytes message per N traces (0: none)
    big_traces: int = 0  # 5,000-span traces, spread over the run
    big_trace_spans: int = 5000
    seed: int = 1
    error_rate: float = 0.05
    canaries: dict[str, str] | None = None
    max_seconds: float = 1800.0


class Traffic:
    def __init__(self, bootstrap: str, topic: str, plan: TrafficPlan, truth: Truth):
        self.bootstrap, self.topic, self.plan, self.truth = bootstrap, topic, plan, truth
        self.sent_traces = 0
        self.seconds = 0.0  # from the first trace generated to the last one handed to the producer
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.delivery_errors: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chaos-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def rate_figures(self, res) -> None:
        """The rate asked for and the one reached: on a loaded machine the generator (one Python
        thread, ~85 % of it model and Avro encoding) can fall behind its schedule, and then sends
        the same traces over a longer time — reported, never a smaller test."""
        res.add("traffic traces/s (target)", round(self.plan.rate, 1))
        res.add("traffic traces/s (reached)", round(self.sent_traces / max(self.seconds, 1e-3), 1))
        res.add("traffic traces sent", self.sent_traces, f">= {self.plan.traces}")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"traffic did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error

    # ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self.error = exc
        finally:
            self.done.set()

    def _delivered(self, tag: str | None) -> Callable:
        truth = self.truth

        def on_delivery(err, msg) -> None:
            if err is not None:
                with self._lock:
                    if len(self.delivery_errors) < 20:
                        self.delivery_errors.append(str(err))
                return
            if tag is not None:
                truth.poison[(msg.partition(), msg.offset())] = tag

        return on_delivery

    def _tracked(self, sends: list[Send]) -> Callable:
        """Delivery callback of a message holding spans of error traces: where and when it was
        written, into their ``Send`` records."""
        ok = self._delivered(None)

        def on_delivery(err, msg) -> None:
            ok(err, msg)
            if err is None:
                acked = time.time_ns()
                for rec in sends:
                    rec.partition, rec.offset = msg.partition(), msg.offset()
                    rec.created_ms, rec.acked_ns = msg.timestamp()[1], acked

        return on_delivery

    def _produce(self) -> None:
        plan, truth = self.plan, self.truth
        gen = TraceGenerator(GeneratorConfig(seed=plan.seed, error_rate=plan.error_rate, canaries=plan.canaries))
        producer = Producer({**PRODUCER_CONFIG, **clients.connection(self.bootstrap)})
        otlp_in = plan.fmt != "avro"
        ok = self._delivered(None)
        pending: list = []  # heap of (due_ns, seq, trace_id, batch, encoded avro value, unkeyed)
        seq = 0
        big_at = {int(plan.traces * (i + 1) / (plan.big_traces + 1)) for i in range(plan.big_traces)}
        t0 = time.monotonic()
        deadline = t0 + plan.max_seconds
        interval = 1.0 / plan.rate

        def send(
            key: bytes | None, value: bytes, tag: str | None = None, partition: int = -1, sends: list | None = None
        ) -> None:
            cb = self._tracked(sends) if sends else ok if tag is None else self._delivered(tag)
            for _ in range(10_000):  # bounded: a full local queue drains within seconds
                try:
                    producer.produce(self.topic, value, key, partition=partition, on_delivery=cb)
                    truth.messages += 1
                    # delivery reports served at once, also when the traffic runs behind its
                    # schedule (then the pacing loop never waits in poll): a report's time is
                    # when the message was written (pipeline.chaos.misses: "held by its producer")
                    producer.poll(0)
                    return
                except BufferError:
                    producer.poll(0.05)
            raise TimeoutError("producer queue stayed full")

        def release(now_ns: int, force: bool = False) -> None:
            unkeyed: list[dict] = []
            unkeyed_sends: list = []
            while pending and (force or pending[0][0] <= now_ns):
                _, _, tid, batch, value, bundle, rec = heapq.heappop(pending)
                sends = [rec] if rec is not None else None
                if bundle and not otlp_in:
                    send(tid, value, partition=poison_rng.randrange(plan.partitions), sends=sends)
                elif bundle:
                    unkeyed.append(batch)
                    unkeyed_sends.extend(sends or ())
                    if len(unkeyed) >= 8:
                        send(None, wire.request(unkeyed), sends=unkeyed_sends)
                        unkeyed, unkeyed_sends = [], []
                elif otlp_in:
                    send(tid, wire.request([batch]), sends=sends)
                else:
                    send(tid, value, sends=sends)
            if unkeyed:
                send(None, wire.request(unkeyed), sends=unkeyed_sends)

        poison_rng = random.Random(plan.seed ^ 0x5EED)
        i = 0
        while i < plan.traces and time.monotonic() < deadline:
            due = t0 + i * interval
            while True:  # bounded by the deadline
                now = time.monotonic()
                if now >= due or now >= deadline:
                    break
                producer.poll(min(due - now, 0.05))
                release(time.time_ns())
            tr = gen.trace(time.time_ns())
            bundle = plan.misroute_every > 0 and i % plan.misroute_every == 0
            truth.add_batches(tr.trace_id, tr.batches, tr.late)
            # an error trace's messages are followed to the log (pipeline.chaos.misses)
            tracked = truth.sends.setdefault(tr.trace_id, []) if truth.traces[tr.trace_id].has_error else None
            for j, (batch, value, at) in enumerate(zip(tr.batches, tr.encoded, tr.export_ns)):
                seq += 1
                rec = None
                if tracked is not None:
                    error = any(sp["status_code"] == "ERROR" for sp in batch["spans"])
                    ids = frozenset(sp["span_id"] for sp in batch["spans"])
                    rec = Send(error, bool(tr.late and tr.late[j]), bundle, at, digest=digest(value), span_ids=ids)
                    tracked.append(rec)
                heapq.heappush(pending, (at, seq, tr.trace_id, batch, value, bundle, rec))
            if i in big_at:
                self._big_trace(send, otlp_in, poison_rng)
            if plan.poison_every and i % plan.poison_every == plan.poison_every - 1:
                truth.poison_sent += 1
                # a zero byte first (protobuf field 0 does not exist), fewer bytes than an Avro trace ID
                send(os.urandom(16), b"\x00" + poison_rng.randbytes(10), tag="random_bytes")
            release(time.time_ns())
            i += 1
            self.sent_traces = i
            self.seconds = time.monotonic() - t0
        release(0, force=True)
        left = producer.flush(min(300.0, max(deadline - time.monotonic(), 60.0)))
        if left or self.delivery_errors:
            raise RuntimeError(f"{left} messages not flushed; delivery errors: {self.delivery_errors[:5]}")

    def _big_trace(self, send, otlp_in: bool, rng) -> None:
        """A 5,000-span trace from one service (a batch job fanning out), in 10 messages."""
        plan = self.plan
        tid = rng.randbytes(16)
        now = time.time_ns()
        root = rng.randbytes(8)
        per = max(plan.big_trace_spans // 10, 1)
        batches = []
        made = 0
        while made < plan.big_trace_spans:
            spans = []
            for _ in range(min(per, plan.big_trace_spans - made)):
                sid = root if made == 0 else rng.randbytes(8)
                spans.append(
                    {
                        "span_id": sid,
                        "parent_span_id": None if made == 0 else root,
                        "name": "bulk-reindex" if made == 0 else "reindex-item",
                        "kind": "INTERNAL",
                        "start_time_unix_nano": now + made * 1000,
                        "end_time_unix_nano": now + made * 1000 + 500,
                        "status_code": "UNSET",
                        "trace_state": "",
                        "detail": b"",
                    }
                )
                made += 1
            batches.append(
                {"trace_id": tid, "service": "bulk-indexer", "spans": spans, "resource": {}, "scope_name": ""}
            )
        from pipeline.codecs import avro

        for b in batches:
            send(tid, wire.request([b]) if otlp_in else avro.encode_span_batch(b))
        self.truth.add_batches(tid, batches)
