"""deploy/ stays true to the code: every metric the dashboard and the self-alerts name is one the
job exports, the rule files are Prometheus rule files, the SLO rules are what `tailsift slo rules`
generates now, and the Kubernetes manifest's embedded config is a valid tailsift config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import config as config_mod
from pipeline import slo_rules
from tests.support.metrics import exposed_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "tailsift-dashboard.json"
SELF_ALERTS = PROM / "tailsift-self-alerts.yml"
SLO_RULES = PROM / "tailsift-slo-rules.yml"
SLO_CONFIG = DEPLOY / "config" / "slo-example.yaml"
K8S = DEPLOY / "k8s" / "tailsift.yaml"

# Series Prometheus itself makes for every scrape target (not in the job's registry).
PROMETHEUS_SYNTHETIC = {"up"}

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, aggregations,
    keywords, label names (in {…}, by/without/on/ignoring/group_x (…)), durations or variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges / subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    e = re.sub(r"\boffset\s+-?(\d+(ms|[smhdwy]))+", " ", e)  # offset modifiers
    e = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", e)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if m.group(0).lower() not in _KEYWORDS:
            names.add(m.group(0))
    return names


def test_metric_name_extraction():
    assert metric_names(
        'sum by (le) (rate(tailsift_flush_seconds_bucket{job="x", le!="+Inf"}[$__rate_interval])) '
        "/ on (instance) group_left(policy) tailsift_policy_errors offset 5m > bool 0.5"
    ) == {"tailsift_flush_seconds_bucket", "tailsift_policy_errors"}
    assert metric_names("histogram_quantile(0.99, sum without (instance) (rate(a_bucket[5m]))) / (1 - $x / 100)") == {
        "a_bucket"
    }
    assert metric_names('up{job="tailsift"} == 0 and absent(foo)') == {"up", "foo"}


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            out.extend((p.get("title", "?"), t["expr"]) for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and q:
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
            out.append((f"variable {var['name']}", m.group(1) if m else q))
    return out


def rule_exprs(path: Path) -> list[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "self-alerts", "slo-rules"])
def test_every_referenced_metric_is_exported_by_the_job(source):
    exprs = {
        "dashboard": dashboard_exprs,
        "self-alerts": lambda: rule_exprs(SELF_ALERTS),
        "slo-rules": lambda: rule_exprs(SLO_RULES),
    }[source]()
    assert exprs, f"no expressions found in the {source}"
    referenced = set().union(*(metric_names(expr) for _, expr in exprs))
    assert any(n.startswith("tailsift_") for n in referenced), f"no tailsift metric found in the {source}: {referenced}"
    known = exposed_names() | PROMETHEUS_SYNTHETIC
    unknown = sorted({(name, where) for where, expr in exprs for name in metric_names(expr) if name not in known})
    assert not unknown, (
        f"{source} references metrics the job does not export (pipeline/metrics.py; counters "
        f"end in _total, histograms in _bucket/_sum/_count): {unknown}"
    )


def test_the_dashboard_is_a_grafana_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    for want in ("Throughput", "SLIs", "SLOs", "Service graph", "Job health"):
        assert any(r.startswith(want) for r in rows), (want, rows)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]), p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]


_PROM_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$")


@pytest.mark.parametrize("path", [SELF_ALERTS, SLO_RULES], ids=lambda p: p.name)
def test_rule_files_follow_the_prometheus_rule_file_format(path):
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and set(doc) == {"groups"} and doc["groups"]
    names = [g["name"] for g in doc["groups"]]
    assert len(set(names)) == len(names), "group names must be unique within a file"
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "limit", "query_offset", "rules"}, group.keys()
        assert isinstance(group["name"], str) and isinstance(group["rules"], list) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            if "record" in rule:
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])
                assert "for" not in rule and "annotations" not in rule
            else:
                assert _PROM_NAME.match(rule["alert"])
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert _DURATION.match(rule[key]), rule[key]
            for key in ("labels", "annotations"):
                value = rule.get(key, {})
                assert isinstance(value, dict), (key, rule)
                assert all(_PROM_NAME.match(k) and isinstance(v, str) for k, v in value.items()), (key, value)


def _rule_files_load_in_promtool(paths):
    promtool = shutil.which("promtool")
    if not promtool:  # as in test_slo: the real checker when it is installed (apt: prometheus)
        return
    proc = subprocess.run([promtool, "check", "rules", *map(str, paths)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_files_pass_promtool_when_installed():
    _rule_files_load_in_promtool([SELF_ALERTS, SLO_RULES])


def test_prometheus_config_loads_both_rule_files():
    doc = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert set(doc["rule_files"]) == {SLO_RULES.name, SELF_ALERTS.name}
    assert all((PROM / f).exists() for f in doc["rule_files"])
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert jobs["tailsift"].get("metrics_path", "/metrics") == "/metrics"
    port = config_mod.parse({}, "<defaults>").metrics.port
    targets = [t for sc in jobs["tailsift"]["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(f":{port}") for t in targets)
    promtool = shutil.which("promtool")
    if promtool:
        proc = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=PROM, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _strip_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        i += 1
    return "".join(lines[i:])


def test_slo_rules_file_is_what_the_generator_makes_now():
    text = SLO_RULES.read_text()
    assert (
        text.startswith("#") and "tailsift slo rules -c deploy/config/slo-example.yaml" in text.split("\ngroups:")[0]
    ), "the header comment must say how the file was generated"
    cfg = config_mod.load(SLO_CONFIG)
    assert cfg.slo.objectives, "the example SLO config has no objectives"
    want = slo_rules.render(slo_rules.objectives(cfg))
    assert _strip_header(text) == want, (
        f"{SLO_RULES.relative_to(ROOT)} is stale: regenerate it with "
        f"`tailsift slo rules -c {SLO_CONFIG.relative_to(ROOT)}` (keep the header comment)"
    )


def test_k8s_manifest_parses_and_embeds_a_valid_config():
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert {"ConfigMap", "Deployment"} <= set(by_kind)
    cm = by_kind["ConfigMap"]
    cfg = config_mod.parse(yaml.safe_load(cm["data"]["tailsift.yaml"]), "deploy/k8s ConfigMap tailsift.yaml")
    assert cfg.metrics.port and cfg.metrics.host == "0.0.0.0", "probes and Prometheus need /metrics on the pod IP"
    assert cfg.privacy.keys.file is None and cfg.privacy.keys.env == "TAILSIFT_TOKEN_KEYS"

    dep = by_kind["Deployment"]
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert spec["terminationGracePeriodSeconds"] >= 30
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == cfg.metrics.port
    assert container["livenessProbe"]["httpGet"]["port"] in ("metrics", cfg.metrics.port)
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env[cfg.privacy.keys.env]["valueFrom"]["secretKeyRef"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_path = container["args"][container["args"].index("-c") + 1]
    cm_volume = next(v["name"] for v in spec["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"])
    assert config_path == f"{mounts[cm_volume]}/tailsift.yaml"
    assert cfg.job.data_dir in mounts.values(), "data_dir must be a writable volume (the root filesystem is read-only)"
