"""The native core's own tests (``cargo test``: reader unit tests and the no-panic property tests
in native/tests/), run from ``make test`` so a change to the crate cannot skip them.

Built with the ``release-tests`` profile (native/Cargo.toml): release semantics (no overflow checks,
no debug assertions — what ``pip install -e .`` ships) without the fat LTO and single codegen unit
of ``--release``, which made every test binary an LTO link of pyo3 and proptest (~60 s of CI, 76 s
of CPU for the crate's test units against 24 s now), in its own profile directory: ``--release``
shared the release units with ``pip install -e .``, and each of the two rebuilt pyo3 and the crate
after the other (``PYO3_PYTHON`` set by setuptools-rust, unset here; crate types cdylib vs
cdylib + rlib)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CRATE = Path(__file__).resolve().parents[2] / "native"


@pytest.mark.skipif(shutil.which("cargo") is None, reason="no Rust toolchain: the native core is not built")
def test_cargo_test_passes():
    run = subprocess.run(
        ["cargo", "test", "--profile", "release-tests", "--quiet", "--manifest-path", str(CRATE / "Cargo.toml")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "test result: ok" in run.stdout
