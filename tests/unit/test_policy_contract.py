"""The policy contract is one list: every policy type of the config union (``pipeline.config``)
has a builder in ``pipeline.policies.BUILDERS``, a row in the README's policy table and an example
in ``deploy/config/``; every built policy implements ``operators.policies.base.Policy``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from operators.policies.base import Policy
from pipeline import config as c
from pipeline.policies import BUILDERS, build_policy
from tests.unit.test_policies_config import ALL_TYPES

ROOT = Path(__file__).resolve().parents[2]
TYPES = sorted(c.POLICY_TYPES)


def readme_policy_rows() -> set[str]:
    """Policy types named in the first cell of the README's policy table."""
    table = (ROOT / "README.md").read_text(encoding="utf-8").split("\n| type | keys | notes |\n", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def example_types() -> set[str]:
    """Policy types used anywhere (sub-policies and rule samplers too) in deploy/config/*.yaml."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("type"), str) and "name" in node:
                found.add(node["type"])
            for key in ("policies", "policy", "samplers"):
                walk(node.get(key))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted((ROOT / "deploy" / "config").glob("*.yaml")):
        walk((yaml.safe_load(path.read_text()) or {}).get("sampling", {}).get("policies"))
    return found


def test_every_policy_type_has_a_builder_and_every_builder_a_type():
    assert sorted(BUILDERS) == TYPES


def test_every_policy_type_has_a_readme_row():
    missing = sorted(set(TYPES) - readme_policy_rows())
    assert not missing, f"policy types without a row in the README's policy table: {missing}"


def test_every_policy_type_has_an_example_in_deploy_config():
    missing = sorted(set(TYPES) - example_types())
    assert not missing, f"policy types without an example in deploy/config/: {missing}"


def test_the_examples_used_here_cover_every_type():
    assert sorted({p["type"] for p in ALL_TYPES}) == TYPES


@pytest.mark.parametrize("raw", ALL_TYPES, ids=lambda p: p["type"])
def test_every_built_policy_implements_the_contract(raw):
    cfg = c.parse({"sampling": {"policies": [raw]}}).sampling.policies[0]
    policy = build_policy(cfg)
    assert Policy in type(policy).__mro__, f"{type(policy).__name__} does not subclass Policy"
    assert policy.name == raw["name"]
    assert isinstance(policy.can_drop, bool)
    assert policy.can_drop == (raw["type"] == "drop")  # only drop (and rules with a drop rule) can drop
    rate_based = raw["type"] in ("rate_limiting", "bytes_limiting", "composite")
    assert (policy.guard_drops == 0) if rate_based else (policy.guard_drops is None)


def test_a_rules_policy_can_drop_when_a_rule_or_a_sampler_drops():
    def rules(*rules, samplers=()):
        raw = {"name": "r", "type": "rules_based", "rules": list(rules), "samplers": list(samplers)}
        return build_policy(c.parse({"sampling": {"policies": [raw]}}).sampling.policies[0])

    assert not rules({"name": "keep", "sample_rate": 2}).can_drop
    assert rules({"name": "deny", "drop": True}).can_drop
    nested = {"name": "d", "type": "drop", "policies": [{"name": "e", "type": "status_code"}]}
    assert rules({"name": "via", "sampler": "d"}, samplers=[nested]).can_drop
