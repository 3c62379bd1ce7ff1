"""Micro-benchmark of the ingest decode: Python decoders vs the native core, same messages.

    python -m pipeline.bench_decode [--traces 2000] [--batch 500] [--repeat 5]

Generated traffic (``pipeline.generator``) as Avro ``SpanBatch`` values and as the OTLP requests an
SDK exporter would send for them; each side decodes and validates every message into span header
fragments, exactly the work ``Job.ingest`` does before routing (the Python side: ``decode_traces``
with time bounds / ``avro.decode_batch`` + ``SpanTimeBounds.violation``; the native side: one
``decode_batch`` call per ``--batch`` messages). Prints CPU µs per span (this process's CPU time,
not wall time: the machine is shared), best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import time

from operators.span_times import SpanTimeBounds
from pipeline.codecs import avro, native, otlp
from pipeline.generator.callgraph import TraceGenerator


def _python_avro(values: list[bytes], bounds: SpanTimeBounds, now_ns: int) -> int:
    spans = 0
    for value in values:
        batch = avro.decode_batch(value)
        if bounds.violation(batch["spans"], now_ns):
            raise AssertionError("generated traffic must be valid")
        for span in batch["spans"]:
            span["service"] = batch["service"]
        spans += len(batch["spans"])
    return spans


def _python_otlp(values: list[bytes], bounds: SpanTimeBounds, now_ns: int) -> int:
    return sum(
        len(t.spans) for value in values for t in otlp.decode_traces(value, "otlp_proto", bounds, now_ns).values()
    )


def _native(codec: native.NativeCodec, values: list[bytes], batch: int, now_ns: int) -> int:
    spans = 0
    for i in range(0, len(values), batch):
        for result in codec.decode_batch(values[i : i + batch], now_ns):
            if isinstance(result, native.Malformed):
                raise AssertionError(f"generated traffic must be valid: {result.reason}: {result.detail}")
            spans += sum(f.span_count for f in result)
    return spans


def _best(fn, repeat: int) -> tuple[float, int]:
    best, spans = float("inf"), 0
    for _ in range(repeat):
        t0 = time.process_time()
        spans = fn()
        best = min(best, time.process_time() - t0)
    return best, spans


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500, help="messages per native call (a consume batch)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    if not native.AVAILABLE:
        print("the native core is not built (pipeline._native did not import): nothing to compare")
        return 1
    now_ns = time.time_ns()
    gen = TraceGenerator()
    avro_values = [v for i in range(args.traces) for v in gen.trace(now_ns - 30_000_000_000 + i * 1000).encoded]
    from pipeline.bench import as_otlp

    otlp_values = [as_otlp(v) for v in avro_values]
    bounds = SpanTimeBounds(60_000_000_000, 300_000_000_000)
    print(f"{len(avro_values)} messages from {args.traces} generated traces; best of {args.repeat}")
    print(f"{'format':<12}{'spans':>9}{'python µs/span':>16}{'native µs/span':>16}{'speed-up':>10}")
    for fmt, values, python in (
        ("avro", avro_values, _python_avro),
        ("otlp_proto", otlp_values, _python_otlp),
    ):
        codec = native.NativeCodec(fmt, bounds)
        py_s, py_spans = _best(lambda v=values, p=python: p(v, bounds, now_ns), args.repeat)
        nat_s, nat_spans = _best(lambda v=values, c=codec: _native(c, v, args.batch, now_ns), args.repeat)
        if py_spans != nat_spans:
            raise AssertionError(f"{fmt}: python decoded {py_spans} spans, native {nat_spans}")
        py_us, nat_us = py_s / py_spans * 1e6, nat_s / nat_spans * 1e6
        print(f"{fmt:<12}{py_spans:>9}{py_us:>16.3f}{nat_us:>16.3f}{py_us / nat_us:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
