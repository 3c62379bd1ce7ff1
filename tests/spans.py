"""Tiny builders of span headers and encoded batches for unit tests (no generator needed)."""

from __future__ import annotations

import itertools

from pipeline.codecs import avro

_ids = itertools.count(1)


def span(
    start=0, end=1_000_000, status="UNSET", parent=b"p" * 8, name="op", kind="SERVER", service="svc", span_id=None
):
    return {
        "service": service,
        "span_id": span_id or next(_ids).to_bytes(8, "big"),
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status_code": status,
        "trace_state": "",
    }


def batch_bytes(
    trace_id: bytes, service: str, spans: list[dict], attributes: dict | None = None, links: list[bytes] | None = None
) -> bytes:
    """``links``: trace IDs every span links to (one link each, span ID 01…01)."""
    wire = []
    link_records = [{"trace_id": t, "span_id": b"\x01" * 8, "trace_state": "", "attributes": {}} for t in links or ()]
    for s in spans:
        s = {k: v for k, v in s.items() if k != "service"}
        s["detail"] = avro.encode_detail(
            {"status_message": "", "attributes": attributes or {}, "events": [], "links": link_records}
        )
        wire.append(s)
    return avro.encode_span_batch({"trace_id": trace_id, "service": service, "spans": wire})
