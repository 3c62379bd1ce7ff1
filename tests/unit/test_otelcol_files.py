"""The Collector configs the README shows are the files the interop test runs, and the pinned
Collector build fails clearly without Go."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OTELCOL = REPO / "deploy" / "otelcol"


@pytest.mark.parametrize("name", ["collector-front.yaml", "collector-back.yaml"])
def test_readme_shows_the_collector_config_files_verbatim(name):
    text = (OTELCOL / name).read_text()
    assert f"```yaml\n{text}```" in (REPO / "README.md").read_text(), f"README's copy of {name} drifted"


def _build_script():
    """deploy/otelcol/build (a script without a .py name) as a module."""
    loader = importlib.machinery.SourceFileLoader("otelcol_build", str(OTELCOL / "build"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("otelcol_build", loader))
    loader.exec_module(module)
    return module


def test_manifest_pins_one_collector_version():
    build = _build_script()
    assert build.manifest_version((OTELCOL / "builder-config.yaml").read_text()) == "v0.160.0"
    with pytest.raises(build.Fail):
        build.manifest_version("receivers:\n  - gomod: a/b v0.160.0\n  - gomod: a/c v0.159.0\n")


def test_build_without_go_fails_with_a_clear_error(tmp_path):
    env = {**os.environ, "GO": str(tmp_path / "no-go-here"), "OTELCOL_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(OTELCOL / "build")], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "the Go toolchain is needed" in done.stderr
    assert done.stdout == ""
