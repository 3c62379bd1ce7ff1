"""The job over SASL_SSL + SCRAM-SHA-512 (README "Security"), on a broker started by
`deploy/local/kafka start --secure`: end to end with exact outputs, and a clear refusal — not a hang —
for a wrong password and for a plaintext client on the secure listener."""

from __future__ import annotations

import urllib.request

import pytest

from pipeline.aggregate.proc import AggregateProcess
from pipeline.demo import run_config
from pipeline.generator.callgraph import GeneratorConfig
from pipeline.generator.produce import produce
from pipeline.jobproc import JobProcess
from pipeline.kafka import clients
from pipeline.readback import read_all
from pipeline.sli_reader import read_windows
from pipeline.topics import create_topics
from tests.integration.outputs import assert_kept_exactly_once_and_whole, assert_sli_exact, wait_committed

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TS_IT_KAFKA_PASSWORD"
REFUSAL_BOUND_S = 90  # the first metadata request times out after 10 s; the rest is startup on a busy machine


@pytest.fixture
def no_external_cluster(monkeypatch):
    # KAFKA_BOOTSTRAP_SERVERS would override the secure listener's address in every config
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)


def secure_keys(secure_kafka, password_env: str = PASSWORD_ENV) -> dict:
    """The launcher's keys, with the password from the environment instead of its file."""
    keys = {k: v for k, v in secure_kafka.kafka_keys().items() if k != "sasl_password_file"}
    return {**keys, "sasl_password_env": password_env}


def test_job_end_to_end_over_sasl_ssl(secure_kafka, no_external_cluster, monkeypatch, unique_name, tmp_path):
    """Topics, generator, job, the aggregation stage (Faust/aiokafka), read-back: every client over
    the SASL_SSL listener (the only one on that port). Every error trace kept whole, every kept span
    once, SLI counts exact, the stage's merged windows count every span; the password in no log
    line and no metric."""
    password = secure_kafka.password()
    monkeypatch.setenv(PASSWORD_ENV, password)
    path, cfg = run_config(
        secure_kafka.bootstrap,
        f"sec-{unique_name}",
        tmp_path,
        kafka=secure_keys(secure_kafka),
        assemble={"decision_wait_ms": 1500},
        sli={"window_seconds": 2, "grace_seconds": 1},
        aggregate={"grace_seconds": 3, "idle_seconds": 3, "tick_ms": 200},
    )
    assert cfg.kafka.security_protocol == "SASL_SSL" and cfg.kafka.bootstrap_servers == secure_kafka.bootstrap
    # the test's own clients (generator, read-back) get the config's security as the CLI's would
    with clients.using_security(cfg.kafka):
        assert all(r.status == "created" for r in create_topics(cfg))
        stage = AggregateProcess(path, "127.0.0.1", cfg.aggregate.web_port, tmp_path / "aggregate.log").start()
        job = JobProcess(path, cfg.metrics.port, tmp_path / "job.log").start()
        try:
            job.wait_ready(cfg.kafka.bootstrap_servers, cfg.kafka.group_id)
            stage.wait_ready()
            traces = []
            stats = produce(
                cfg.kafka.bootstrap_servers,
                cfg.topics.spans_raw.name,
                count=300,
                duration_s=None,
                rate=None,
                config=GeneratorConfig(seed=14, error_rate=0.1),
                progress=False,
                on_trace=traces.append,
            )
            metrics = job.wait_drained(stats.spans)
            assert metrics["tailsift_spans_ingested_total"] == stats.spans
            wait_committed(cfg)
            assert_kept_exactly_once_and_whole(cfg, traces, min_errors=15)
            assert_sli_exact(cfg, traces)
            with urllib.request.urlopen(job.metrics_url, timeout=10) as resp:
                exposition = resp.read().decode()
            partials = sum(1 for _ in read_all(cfg.kafka.bootstrap_servers, cfg.topics.sli_windows.name))
            stage.wait_idle(partials)
            merged = read_windows(cfg, source="merged")
        finally:
            job.stop()
            stage.stop()
    assert sum(w.span_count for w in merged.values()) == stats.spans
    log = (tmp_path / "job.log").read_text()
    stage_log = (tmp_path / "aggregate.log").read_text()
    assert "tailsift worker" in log and "Authenticated as tailsift via SCRAM-SHA-512" in stage_log
    for text in (log, exposition, stage_log):
        assert password not in text


WRONG_PASSWORD = ["refused the connection", "authentication failed", "invalid credentials", PASSWORD_ENV]
PLAINTEXT = ["refused the connection", "closed the connection at the first request", "PLAINTEXT"]


@pytest.mark.parametrize(
    ("command", "case", "expected"),
    [
        ("run", "wrong_password", WRONG_PASSWORD),
        ("run", "plaintext", PLAINTEXT),
        ("aggregate", "wrong_password", WRONG_PASSWORD),
    ],
)
def test_a_refused_connection_stops_the_job_with_the_reason(
    secure_kafka, no_external_cluster, monkeypatch, unique_name, tmp_path, command, case, expected
):
    """Before, the job retried a refused connection for a minute as if the broker were away, then
    exited 2 with "cannot reach Kafka at …: Failed to get metadata: Local: Broker transport
    failure" for both cases (observed with the refusal check turned off), never saying why; the
    aggregation stage's check (read, not run) said the same after its 15 s metadata timeout. Now
    both exit 2 at the first failed metadata request, naming the problem and the keys to check."""
    wrong = "not-the-password-" + unique_name
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    keys = secure_keys(secure_kafka) if case == "wrong_password" else {}
    path, cfg = run_config(secure_kafka.bootstrap, f"sec-{case}-{unique_name}", tmp_path, kafka=keys)
    assert cfg.kafka.security_protocol == ("SASL_SSL" if case == "wrong_password" else "PLAINTEXT")
    log_path = tmp_path / f"{command}.log"
    if command == "run":
        proc: JobProcess | AggregateProcess = JobProcess(path, cfg.metrics.port, log_path)
    else:
        proc = AggregateProcess(path, "127.0.0.1", cfg.aggregate.web_port, log_path)
    proc.start()
    try:
        code = proc.proc.wait(timeout=REFUSAL_BOUND_S)
    finally:
        proc.stop()
    log = log_path.read_text()
    final = log.strip().splitlines()[-1]
    assert code == 2, log[-3000:]
    assert final.startswith(f"tailsift {command}: Kafka at ")
    for words in expected:
        assert words in final, final
    assert wrong not in log
