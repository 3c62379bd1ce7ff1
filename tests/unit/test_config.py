import subprocess
import sys

import pytest

from pipeline import config


def error_of(data):
    with pytest.raises(config.ConfigError) as exc:
        config.parse(data, "bad.yaml")
    return str(exc.value)


def test_defaults_are_valid_and_complete():
    c = config.parse({})
    assert c.topics.spans_raw.name == "spans.raw"
    assert [p.type for p in c.sampling.policies] == ["status_code", "latency", "probabilistic"]


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"assemble": {"decision_wait_ms": -1}}, "assemble.decision_wait_ms", "greater than or equal"),
        ({"assembel": {}}, "assembel", "unknown key"),
        (
            {"sampling": {"policies": [{"name": "x", "type": "latency"}]}},
            "sampling.policies.0(x).threshold_ms",
            "required",
        ),
        ({"sampling": {"policies": [{"name": "x", "type": "nope"}]}}, "sampling.policies.0", "does not match"),
        (
            {"sampling": {"policies": [{"name": "x", "type": "probabilistic", "sampling_percentage": 200}]}},
            "sampling.policies.0(x).sampling_percentage",
            "less than or equal to 100",
        ),
        (
            {
                "sampling": {
                    "policies": [{"name": "x", "type": "always_sample"}, {"name": "x", "type": "always_sample"}]
                }
            },
            "sampling.policies",
            "used twice",
        ),
        ({"topics": {"traces_kept": {"name": "spans.raw"}}}, "topics.traces_kept", "both name"),
        ({"kafka": {"heartbeat_interval_ms": 20000}}, "kafka", "heartbeat_interval_ms must be smaller"),
        ({"kafka": {"linger_ms": 1000}}, "kafka.linger_ms", "less than or equal to 500"),
        ({"topics": {"sli_windows": {"name": "bad name!"}}}, "topics.sli_windows.name", "pattern"),
    ],
)
def test_bad_config_names_the_key_and_the_problem(data, key, words):
    msg = error_of(data)
    assert f"  {key}:" in msg or key in msg
    assert words in msg


def test_top_level_must_be_a_mapping():
    assert "mapping" in error_of([1, 2])


def test_environment_overrides_bootstrap(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9999")
    assert config.parse({}).kafka.bootstrap_servers == "10.0.0.1:9999"


def test_tailsift_run_with_bad_config_exits_non_zero_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("assemble:\n  decision_wait_ms: soon\nsli:\n  windw_seconds: 10\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "-c", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "assemble.decision_wait_ms" in proc.stderr and "sli.windw_seconds: unknown key" in proc.stderr
    assert proc.stdout == ""


def test_unreadable_and_non_yaml_files_are_clear_errors(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(broken)


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"assemble": {"decision_cache_size": 0}}, "assemble.decision_cache_size", "exactly_once"),
        ({"assemble": {"decision_restore_ms": 0}}, "assemble.decision_restore_ms", "exactly_once"),
        ({"sli": {"window_seconds": 1e-10}}, "sli.window_seconds", "greater than or equal to 0.001"),
        ({"sli": {"window_seconds": 1e-4}}, "sli.window_seconds", "greater than or equal to 0.001"),
    ],
)
def test_config_traps_are_refused_at_load_naming_the_key(data, key, words):
    """The old code accepted each: exactly_once with decision_cache_size 0 or decision_restore_ms
    0 silently ran without its dedup; sli.window_seconds 1e-10 loaded and every ingest then raised
    ZeroDivisionError (a 0 ns window)."""
    msg = error_of(data)
    assert key in msg and words in msg


def test_the_dedup_settings_may_be_zero_at_least_once():
    cfg = config.parse(
        {
            "job": {"processing_guarantee": "at_least_once"},
            "assemble": {"decision_cache_size": 0, "decision_restore_ms": 0},
        }
    )
    assert cfg.assemble.decision_cache_size == 0


def test_the_job_producer_lingers_as_configured():
    """kafka.linger_ms reaches the job's producer (librdkafka linger.ms): 50 ms unless set."""
    from pipeline.kafka import clients

    assert clients.producer(config.Config(), "t")["linger.ms"] == 50
    assert clients.producer(config.Config.model_validate({"kafka": {"linger_ms": 0}}), None)["linger.ms"] == 0
