"""``job.core``: which ingest decoders the job uses (the native core or the Python reference)."""

from __future__ import annotations

import pytest

from pipeline import config
from pipeline.codecs import native


def test_auto_picks_native_when_built_for_the_formats_it_decodes(monkeypatch):
    monkeypatch.setattr(native, "AVAILABLE", True)
    monkeypatch.delenv(config.AUTO_CORE_ENV, raising=False)  # make test-python-core sets it
    assert config.parse({}).ingest_core() == "native"
    assert config.parse({"ingest": {"format": "otlp_proto"}}).ingest_core() == "native"
    assert config.parse({"ingest": {"format": "otlp_json"}}).ingest_core() == "python"
    assert config.parse({"job": {"core": "python"}}).ingest_core() == "python"


def test_auto_falls_back_to_python_when_the_core_is_not_built(monkeypatch):
    monkeypatch.setattr(native, "AVAILABLE", False)
    assert config.parse({}).ingest_core() == "python"


def test_an_explicit_native_core_that_cannot_run_is_a_config_error(monkeypatch):
    monkeypatch.setattr(native, "AVAILABLE", False)
    with pytest.raises(Exception, match="job.core: native, but the native core is not built"):
        config.parse({"job": {"core": "native"}})
    monkeypatch.setattr(native, "AVAILABLE", True)
    with pytest.raises(Exception, match="job.core: native decodes ingest.format avro or otlp_proto, not otlp_json"):
        config.parse({"job": {"core": "native"}, "ingest": {"format": "otlp_json"}})
    assert config.parse({"job": {"core": "native"}}).ingest_core() == "native"


def test_the_environment_can_make_auto_the_python_reference(monkeypatch):
    """``make test-python-core`` runs the whole suite on the reference core through this switch:
    without it, ``auto`` is native wherever the crate is built and the reference core only ever
    ran in the tests that name it."""
    monkeypatch.setattr(native, "AVAILABLE", True)
    monkeypatch.setenv(config.AUTO_CORE_ENV, "python")
    assert config.parse({}).ingest_core() == "python"
    assert config.parse({"job": {"core": "native"}}).ingest_core() == "native"  # explicit wins
    monkeypatch.setenv(config.AUTO_CORE_ENV, "rust")
    with pytest.raises(config.ConfigError, match="TAILSIFT_AUTO_CORE='rust'"):
        config.parse({}).ingest_core()
    monkeypatch.delenv(config.AUTO_CORE_ENV)
    assert config.parse({}).ingest_core() == "native"
