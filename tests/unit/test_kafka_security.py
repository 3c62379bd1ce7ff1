"""Kafka security settings (README "Security"): the ``kafka:`` keys, secrets only from the
environment or a file, one function building the security part of every client's settings, and no
client in ``pipeline/`` that bypasses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline import config as c
from pipeline.kafka import clients, security

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-never-printed"
SASL_SSL = {
    "bootstrap_servers": "broker:9093",
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "tailsift",
    "sasl_password_env": "TS_TEST_KAFKA_PASSWORD",
}


@pytest.fixture(autouse=True)
def _tool_security_reset():
    # cli.main(...) sets the process's tool security from the config it loads: undo it after each test
    with clients.using_security(None):
        yield


def kafka(**keys) -> c.Config:
    return c.parse({"kafka": keys}, "<test>")


def refused(**keys) -> str:
    with pytest.raises(c.ConfigError) as exc:
        kafka(**keys)
    return str(exc.value)


# ------------------------------------------------------------------------------ config keys
@pytest.mark.parametrize("key", ["sasl_password", "ssl_key_password"])
def test_a_password_in_the_yaml_is_refused_saying_where_it_goes(key):
    msg = refused(**SASL_SSL, **{key: PASSWORD})
    assert f"kafka.{key}" in msg and "environment variable" in msg and "_file" in msg
    assert PASSWORD not in msg


def test_sasl_needs_a_mechanism_and_a_user():
    msg = refused(security_protocol="SASL_SSL")
    assert "kafka.sasl_mechanism" in msg and "kafka.sasl_username" in msg


def test_settings_for_another_protocol_are_refused_not_ignored():
    assert "kafka.sasl_username" in refused(security_protocol="SSL", sasl_username="u")
    assert "kafka.ssl_ca_location" in refused(ssl_ca_location="/ca.pem")
    assert "go together" in refused(security_protocol="SSL", ssl_certificate_location="/c.pem")
    assert "security_protocol" in refused(security_protocol="TLS")
    assert "sasl_mechanism" in refused(**{**SASL_SSL, "sasl_mechanism": "GSSAPI"})


# ------------------------------------------------------------------------------ librdkafka settings
def test_plaintext_adds_nothing():
    assert clients.connection(kafka()) == {"bootstrap.servers": "127.0.0.1:9092"}


def test_sasl_ssl_settings_take_the_password_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TS_TEST_KAFKA_PASSWORD", PASSWORD)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = kafka(**SASL_SSL, ssl_ca_location=str(ca))
    assert clients.connection(cfg) == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "tailsift",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
    }
    # every client the worker builds carries them
    for conf in (clients.input_consumer(cfg), clients.producer(cfg, "t"), clients.restore_consumer(cfg)):
        assert conf["sasl.password"] == PASSWORD and conf["security.protocol"] == "sasl_ssl"


def test_a_password_file_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TS_TEST_KAFKA_PASSWORD", "from-env")
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    cfg = kafka(**SASL_SSL, sasl_password_file=str(f))
    assert security.librdkafka(cfg.kafka)["sasl.password"] == PASSWORD


def test_a_missing_password_names_the_variable(monkeypatch):
    monkeypatch.delenv("TS_TEST_KAFKA_PASSWORD", raising=False)
    with pytest.raises(security.KafkaSecurityError, match="TS_TEST_KAFKA_PASSWORD is not set"):
        clients.base(kafka(**SASL_SSL))


def test_client_certificate_and_key_password(monkeypatch, tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("TAILSIFT_KAFKA_SSL_KEY_PASSWORD", PASSWORD)
    cfg = kafka(
        security_protocol="SSL",
        ssl_ca_location=str(tmp_path / "ca.pem"),
        ssl_certificate_location=str(tmp_path / "client.pem"),
        ssl_key_location=str(tmp_path / "client.key"),
    )
    assert security.librdkafka(cfg.kafka) == {
        "security.protocol": "ssl",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
        "ssl.key.password": PASSWORD,
    }
    with pytest.raises(security.KafkaSecurityError, match="kafka.ssl_ca_location: cannot read"):
        security.librdkafka(kafka(security_protocol="SSL", ssl_ca_location=str(tmp_path / "missing.pem")).kafka)


def test_tools_given_only_an_address_use_the_loaded_configs_security(monkeypatch):
    monkeypatch.setenv("TS_TEST_KAFKA_PASSWORD", PASSWORD)
    cfg = kafka(**SASL_SSL)
    assert clients.connection("other:1") == {"bootstrap.servers": "other:1"}
    with clients.using_security(cfg.kafka):
        assert clients.connection("other:1")["sasl.password"] == PASSWORD
    assert "sasl.password" not in clients.connection("other:1")


# ------------------------------------------------------------------------------ Faust (aiokafka)
def test_faust_credentials(monkeypatch, tmp_path):
    import faust

    monkeypatch.setenv("TS_TEST_KAFKA_PASSWORD", PASSWORD)
    assert security.faust_credentials(kafka().kafka) is None
    sasl_ssl = security.faust_credentials(kafka(**SASL_SSL).kafka)
    assert isinstance(sasl_ssl, faust.SASLCredentials)
    assert (sasl_ssl.protocol.value, sasl_ssl.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (sasl_ssl.username, sasl_ssl.password) == ("tailsift", PASSWORD)
    assert PASSWORD not in repr(sasl_ssl)
    plain = security.faust_credentials(kafka(**{**SASL_SSL, "security_protocol": "SASL_PLAINTEXT"}).kafka)
    assert plain.protocol.value == "SASL_PLAINTEXT" and plain.ssl_context is None
    assert isinstance(security.faust_credentials(kafka(security_protocol="SSL").kafka), faust.SSLCredentials)


def test_the_aggregate_app_gets_the_credentials(monkeypatch):
    from pipeline.aggregate import app as aggregate_app

    monkeypatch.setenv("TS_TEST_KAFKA_PASSWORD", PASSWORD)
    made = []
    monkeypatch.setattr(aggregate_app, "Producer", made.append)  # the tick producer, not connected here
    app, _ = aggregate_app.build_app(kafka(**SASL_SSL))
    creds = app.conf.broker_credentials
    assert (creds.protocol.value, creds.username, creds.password) == ("SASL_SSL", "tailsift", PASSWORD)
    assert [(m["security.protocol"], m["sasl.password"]) for m in made] == [("sasl_ssl", PASSWORD)]


# ------------------------------------------------------------------------------ never printed
def test_config_check_and_reprs_print_no_secret(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TS_TEST_KAFKA_PASSWORD", PASSWORD)
    path = tmp_path / "c.yaml"
    path.write_text("kafka: " + repr(SASL_SSL).replace("'", '"') + "\n")
    assert cli.main(["config", "check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "TS_TEST_KAFKA_PASSWORD" in out and PASSWORD not in out
    cfg = c.load(path)
    assert clients.base(cfg)["sasl.password"] == PASSWORD  # the client gets it …
    assert PASSWORD not in repr(cfg) + str(cfg) + cfg.model_dump_json()  # … the config never holds it


def test_refusal_watch_names_the_problem_and_the_keys():
    cfg = kafka(**SASL_SSL).kafka
    watch = security.RefusalWatch(cfg)
    watch.log(7, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "broker: Connection refused")
    assert watch.refusal() is None  # a broker that is away is not a refusal
    watch.log(3, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "SASL authentication error: Authentication failed")
    msg = watch.refusal()
    assert "authentication failed" in msg and "$TS_TEST_KAFKA_PASSWORD" in msg and "kafka.sasl_username" in msg
    plain = security.RefusalWatch(kafka().kafka)
    for _ in range(3):
        plain.log(6, "%s [%s] %s", "FAIL", "x", "Disconnected: connection closed by peer (in state APIVERSION_QUERY)")
    assert "PLAINTEXT client" in plain.refusal()


# ------------------------------------------------------------------------------ no bypass
CLIENT_CLASSES = {"Consumer", "Producer", "AdminClient"}
SETTINGS_MODULE = REPO / "pipeline" / "kafka" / "clients.py"
# wrappers handed finished settings: path → who builds them
TAKES_SETTINGS = {"pipeline/kafka/producer.py": "the worker passes clients.producer(…)"}


def _calls(tree: ast.AST):
    """(call, the enclosing function's source) for every call in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Call):
                    yield sub, node


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def client_bypasses(root: Path) -> list[str]:
    """Kafka clients under ``root`` whose settings do not come from ``pipeline.kafka.clients`` (and
    so would connect without the configured security settings)."""
    problems = set()
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(root.parent)
        if path != SETTINGS_MODULE:
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value == "bootstrap.servers":
                    problems.add(f"{where}:{node.lineno}: sets bootstrap.servers itself (use clients.connection)")
        for call, scope in _calls(tree):
            name = _name(call.func)
            if name.startswith("AIOKafka"):
                problems.add(f"{where}:{call.lineno}: {name} (use the Faust app with broker_credentials)")
            elif name == "App" and ast.unparse(call.func).startswith("faust"):
                if not any(k.arg == "broker_credentials" for k in call.keywords):
                    problems.add(f"{where}:{call.lineno}: faust.App without broker_credentials")
            elif name in CLIENT_CLASSES and (call.args or call.keywords):
                arg = call.args[0] if call.args else call.keywords[0].value
                # the settings are built here from clients.…, or (a variable) in this function from it
                source = ast.unparse(arg) if not isinstance(arg, ast.Name) else ast.unparse(scope)
                if "clients." not in source and path != SETTINGS_MODULE and str(where) not in TAKES_SETTINGS:
                    problems.add(
                        f"{where}:{call.lineno}: {name}({ast.unparse(arg)[:60]}) bypasses pipeline.kafka.clients"
                    )
    return sorted(problems)


def test_every_client_in_pipeline_takes_its_settings_from_one_place():
    """Run on the code before this change, the check listed 20 clients built from a bare
    ``{"bootstrap.servers": …}`` (topics, aggregate, readback, bench, generator, chaos, peerbench,
    demo, sli_reader, the OTel exporter) and a ``faust.App`` without credentials: with security
    settings in the config they would have connected in plaintext."""
    assert client_bypasses(REPO / "pipeline") == []


def test_the_bypass_check_finds_a_bypass(tmp_path):
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "tool.py").write_text(
        "import faust\nfrom confluent_kafka import Consumer, Producer\n"
        "def f(b):\n    conf = {'group.id': 'g'}\n    return Consumer(conf), Producer({'x': b})\n"
        "app = faust.App('a', broker='kafka://b')\n"
    )
    assert client_bypasses(pkg) == [
        "pipeline/tool.py:5: Consumer(conf) bypasses pipeline.kafka.clients",
        "pipeline/tool.py:5: Producer({'x': b}) bypasses pipeline.kafka.clients",
        "pipeline/tool.py:6: faust.App without broker_credentials",
    ]


# ------------------------------------------------------------------------------ the local launcher
def _launcher():
    import importlib.machinery
    import importlib.util

    path = REPO / "deploy" / "local" / "kafka"
    loader = importlib.machinery.SourceFileLoader("local_kafka_launcher", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_launcher_secure_listener_sits_beside_the_plaintext_one(tmp_path):
    k = _launcher()
    plain = k.server_properties(tmp_path, 9092, 9093)
    assert "SASL_SSL" not in plain.split("listener.security.protocol.map")[0]  # `start` unchanged
    secure = k.server_properties(tmp_path, 9092, 9093, 9094) + k.secure_properties(
        {"keystore": "/k.p12", "password": "pw", "ca": "/ca.pem"}
    )
    props = dict(line.split("=", 1) for line in secure.splitlines() if "=" in line and not line.startswith("#"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094,CONTROLLER://127.0.0.1:9093"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert k.previous_ports(tmp_path) == (None, None, None)  # no server.properties yet
    (tmp_path / "server.properties").write_text(secure)
    assert k.previous_ports(tmp_path) == (9092, 9093, 9094)
    # the kafka: keys it writes for tailsift validate, and name the password by file
    keys = yaml.safe_load(k.client_yaml(tmp_path, "127.0.0.1:9094"))
    cfg = c.parse(keys, "<launcher yaml>").kafka
    assert (cfg.security_protocol, cfg.sasl_mechanism, cfg.sasl_username) == ("SASL_SSL", "SCRAM-SHA-512", "tailsift")
    assert cfg.sasl_password_file == str(tmp_path / "secure" / "tailsift.password")
