"""The README cannot drift from the code: its configuration reference and its list of metrics are
compared with the pydantic models (``pipeline/config*.py``) and with what ``pipeline/metrics.py``
registers. A changed default, a new or renamed key, or a new or renamed metric fails here until the
README says the same."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from pipeline import config as c
from pipeline import config_privacy as cp
from tests.support.metrics import exposed_names, registered_metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")

# README values that illustrate a key rather than give its default (the key must still exist, and
# the example must validate): path → why it is an example.
EXAMPLES = {
    ("slo", "objectives"): "no SLOs by default; the block shows two",
    ("privacy", "rules"): "no own rules by default; the block shows two",
}
# Models whose values the README writes as one-line maps holding only the keys that differ from the
# field defaults; their other keys must still be named in the block (a comment lists them).
ONE_LINE_MODELS = (c.TopicConfig, cp.DetectorConfig)


def yaml_block(readme: str, heading: str) -> tuple[str, dict]:
    """The first ```yaml block of the README section under ``## heading``: its text and its data."""
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return text, yaml.safe_load(text)


def documented_config(readme: str) -> tuple[str, dict]:
    """The Configuration block, with its privacy section taken from the Privacy block (what the
    Configuration block shows of it must agree)."""
    text, documented = yaml_block(readme, "Configuration")
    privacy_text, privacy = yaml_block(readme, "Privacy")
    for key, value in (documented.get("privacy") or {}).items():
        if privacy["privacy"].get(key) != value:
            privacy["privacy"][f"{key} (the two README blocks disagree)"] = value
    return text + privacy_text, {**documented, **privacy}


def key_problems(model: type[BaseModel], documented: Any, block: str, path: tuple = ()) -> list[str]:
    """Keys the README has that the model has not, and keys the model has that the README omits."""
    if not isinstance(documented, dict):
        return [f"{'.'.join(path)}: the README gives {documented!r}, the config has a section of keys here"]
    fields = model.model_fields
    problems = [f"{'.'.join((*path, k))}: in the README, not a config key" for k in documented if k not in fields]
    for name, info in fields.items():
        sub = (*path, name)
        if name not in documented:
            problems.append(f"{'.'.join(sub)}: a config key the README's reference leaves out")
            continue
        kind = info.annotation
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)) or sub in EXAMPLES:
            continue
        if issubclass(kind, ONE_LINE_MODELS):
            named = set(re.findall(r"\b[a-z_]+\b", block))
            problems += [
                f"{'.'.join(sub)}.{k}: a key the README never names" for k in kind.model_fields if k not in named
            ]
        else:
            problems += key_problems(kind, documented[name], block, sub)
    return problems


def differences(got: Any, want: Any, path: str) -> list[str]:
    if isinstance(got, dict) and isinstance(want, dict):
        return [p for k in sorted(set(got) | set(want)) for p in differences(got.get(k), want.get(k), f"{path}.{k}")]
    return [] if got == want else [f"{path}: the README says {got!r}, the default is {want!r}"]


def config_problems(readme: str) -> list[str]:
    """Every way the README's configuration reference disagrees with the models ([] when none)."""
    block, documented = documented_config(readme)
    problems = key_problems(c.Config, documented, block)
    if problems:
        return problems
    values = copy.deepcopy(documented)
    for *parents, key in EXAMPLES:  # an example stands for no default: the model's default stands in
        node = values
        for part in parents:
            node = node[part]
        del node[key]
    try:
        got = c.Config.model_validate(values)
    except ValidationError as exc:
        return [f"the README's values are not a valid config: {exc}"]
    return differences(got.model_dump(), c.Config().model_dump(), "config")


def test_the_readme_config_reference_has_every_key_and_default_of_the_models():
    problems = config_problems(README)
    assert not problems, "README 'Configuration'/'Privacy' blocks disagree with the models:\n  " + "\n  ".join(problems)


def test_the_examples_the_readme_shows_are_valid_config():
    _, documented = documented_config(README)
    c.parse({"slo": documented["slo"], "privacy": {"rules": documented["privacy"]["rules"]}}, "README")


@pytest.mark.parametrize(
    "old, new",
    [
        ("partitions: 6, retention_ms: 86400000}", "partitions: 7, retention_ms: 86400000}"),  # a changed default
        ("  tick_ms: 200 ", "  tick_mz: 200 "),  # a misspelt key
        ("  host: 127.0.0.1\n", "\n"),  # a key left out
        ("    card:    {action: redact}", "    card:    {action: tokenize}"),  # in the Privacy block
        ("  enabled: true\ningest:", "  enabled: false\ningest:"),  # the two blocks disagree
    ],
    ids=["changed-default", "unknown-key", "missing-key", "privacy-default", "blocks-disagree"],
)
def test_the_comparison_catches_a_drift(old, new):
    assert old in README
    assert config_problems(README.replace(old, new, 1))


def readme_metric_names(readme: str = README) -> set[str]:
    return set(re.findall(r"\btailsift_[a-z0-9_]*[a-z0-9]", readme))


def test_every_metric_the_readme_names_is_exported():
    unknown = sorted(readme_metric_names() - exposed_names() - registered_metrics())
    assert not unknown, f"README names metrics the job does not export (pipeline/metrics.py): {unknown}"


def test_every_metric_the_job_registers_is_in_the_readme():
    missing = sorted(registered_metrics() - readme_metric_names())
    assert not missing, f"metrics the job exports that the README does not list: {missing}"
