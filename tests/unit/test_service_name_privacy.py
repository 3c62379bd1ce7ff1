"""A service name is producer text: with privacy on, PII in it never becomes an SLI dimension
(``sli.windows`` records) or a metric label (SLI counters, service-graph edges). Before, the raw
``service.name`` of the message went into both, while kept traces already tokenized it."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, generate_latest

from pipeline.codecs import avro
from pipeline.privacy import build_protector
from tests.spans import span
from tests.support.jobs import make_config, make_job, received, records

KEY = bytes(range(32))
CANARY = "svc-canary.7q3@example.com"


def test_pii_in_a_service_name_is_tokenized_in_sli_windows_and_metric_labels():
    cfg = make_config(
        privacy={"enabled": True},
        sampling={"policies": [{"name": "all", "type": "always_sample"}]},
    )
    protector = build_protector(cfg.privacy, {"TAILSIFT_TOKEN_KEYS": "k1:" + KEY.hex()})
    job = make_job(protector=protector, privacy={"enabled": True}, sampling=cfg.sampling.model_dump())
    tid = os.urandom(16)
    now = 10**12
    root = span(start=1_000, end=2_000_000, parent=None, kind="CLIENT", service="frontend")
    child = span(start=2_000, end=1_000_000, parent=root["span_id"], kind="SERVER", service=CANARY)
    job.ingest([received(0, tid, "frontend", [root]), received(1, tid, CANARY, [child])], now_ns=now)
    out = job.collect(now + 60 * 10**9, flush_all_windows=True)

    windows = [avro.decode(avro.SLI_WINDOW, r.value) for r in records(out, "sli.windows")]
    services = {w["service"] for w in windows}
    assert "frontend" in services  # ordinary names stay as they are
    assert len(services) == 2 and not any(CANARY in s or "example.com" in s for s in services), services
    assert not any(CANARY.encode() in r.key for r in records(out, "sli.windows") if r.key)

    job.update_gauges()
    exposition = generate_latest(REGISTRY).decode()
    assert "canary.7q3" not in exposition  # (the registry is process-wide: look for this test's own canary)
    assert 'client="frontend"' in exposition  # the edge was counted, with its server tokenized
