"""Generated SpanBatch dicts as OTLP ``ExportTraceServiceRequest`` bytes — one request per batch
(keyed by trace ID, as tailsift's exporter writes) or several traces' batches in one request
(unkeyed, as the Collector's Kafka exporter writes by default), so re-keying is exercised."""

from __future__ import annotations

from pipeline.codecs import avro, otlp


def full_batch(batch: dict) -> dict:
    """A generator batch (detail and resource still Avro-encoded) in the KeptTrace dict shape."""
    spans = []
    for s in batch["spans"]:
        detail = avro.decode_detail(s.get("detail") or b"")
        spans.append({**{k: v for k, v in s.items() if k != "detail"}, **detail})
    resource = batch.get("resource") or {}
    if isinstance(resource, (bytes, bytearray)):
        resource = avro.decode_resource(resource)
    return {**batch, "spans": spans, "resource": resource}


def request(batches: list[dict], fmt: str = "otlp_proto") -> bytes:
    """One OTLP request holding these (generator-shaped) batches, of one trace or of many."""
    return otlp.encode_request([full_batch(b) for b in batches], fmt)
