"""The native core's own tests (``cargo test``: reader unit tests and the no-panic property tests
in native/tests/), run from ``make test`` so a change to the crate cannot skip them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CRATE = Path(__file__).resolve().parents[2] / "native"


@pytest.mark.skipif(shutil.which("cargo") is None, reason="no Rust toolchain: the native core is not built")
def test_cargo_test_passes():
    run = subprocess.run(
        ["cargo", "test", "--release", "--quiet", "--manifest-path", str(CRATE / "Cargo.toml")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "test result: ok" in run.stdout
