"""A second worker on one host: the metrics port is taken."""

import socket

import pytest

from pipeline import cli, metrics


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_taken_metrics_port_is_a_clear_error_naming_the_key(taken_port):
    """The old code let start_http_server's OSError ([Errno 98] Address already in use) escape."""
    with pytest.raises(metrics.MetricsPortInUse) as err:
        metrics.serve(taken_port, "127.0.0.1")
    assert f"127.0.0.1:{taken_port}" in str(err.value) and "metrics.port" in str(err.value)


def test_tailsift_run_exits_2_with_the_message_and_no_traceback(taken_port, tmp_path, monkeypatch, capsys):
    """``tailsift run`` with the port taken: the old code died with a traceback; now exit 2 and one
    line. (app.run is stood in for by the part of it that serves /metrics: the rest needs a broker.)"""
    from pipeline import app

    monkeypatch.setattr(app, "run", lambda cfg, loglevel: metrics.serve(cfg.metrics.port, cfg.metrics.host))
    path = tmp_path / "c.yaml"
    path.write_text(f"metrics: {{port: {taken_port}}}\nprivacy: {{enabled: false}}\n")
    assert cli.main(["run", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tailsift run: cannot serve /metrics") and "Traceback" not in err
