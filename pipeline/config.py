"""tailsift's YAML configuration: models, defaults, validation with errors that name the key.

Secrets never live here: tokenization keys come from the environment or a key file (see README).
``KAFKA_BOOTSTRAP_SERVERS`` in the environment overrides ``kafka.bootstrap_servers``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config_privacy import PrivacyConfig


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file, the key and the problem."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = Field("tailsift", description="consumer group of the job; also the Faust app id")
    session_timeout_ms: int = Field(10_000, ge=1_000, le=600_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=60_000)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "KafkaConfig":
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be smaller than session_timeout_ms")
        return self


class TopicConfig(_Strict):
    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(6, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=32)
    retention_ms: int | None = Field(None, ge=-1, description="-1 = forever; unset = broker default")
    compacted: bool = False


class TopicsConfig(_Strict):
    spans_raw: TopicConfig = TopicConfig(name="spans.raw", partitions=6, retention_ms=86_400_000)
    traces_kept: TopicConfig = TopicConfig(name="traces.kept", partitions=6)
    sli_windows: TopicConfig = TopicConfig(name="sli.windows", partitions=3)
    deadletter: TopicConfig = TopicConfig(name="spans.deadletter", partitions=1, retention_ms=604_800_000)
    pii_audit: TopicConfig = TopicConfig(name="pii.audit", partitions=1)

    def all(self) -> dict[str, TopicConfig]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class AssembleConfig(_Strict):
    decision_wait_ms: int = Field(5_000, ge=0, le=3_600_000, description="wait after a trace's first span")
    max_buffered_spans: int = Field(1_000_000, ge=1, description="global bound; oldest traces decided early past it")
    max_spans_per_trace: int = Field(10_000, ge=1, description="a trace reaching it is decided at once")
    decision_cache_size: int = Field(100_000, ge=0, description="recent decisions remembered for late spans")


class _PolicyBase(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class StatusCodePolicyConfig(_PolicyBase):
    type: Literal["status_code"]
    status_codes: list[Literal["ERROR", "OK", "UNSET"]] = Field(default_factory=lambda: ["ERROR"], min_length=1)


class LatencyPolicyConfig(_PolicyBase):
    type: Literal["latency"]
    threshold_ms: float = Field(gt=0)
    upper_threshold_ms: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "LatencyPolicyConfig":
        if self.upper_threshold_ms is not None and self.upper_threshold_ms <= self.threshold_ms:
            raise ValueError("upper_threshold_ms must be greater than threshold_ms")
        return self


class ProbabilisticPolicyConfig(_PolicyBase):
    type: Literal["probabilistic"]
    sampling_percentage: float = Field(gt=0, le=100)


class AlwaysSamplePolicyConfig(_PolicyBase):
    type: Literal["always_sample"]


PolicyConfig = Annotated[
    Union[StatusCodePolicyConfig, LatencyPolicyConfig, ProbabilisticPolicyConfig, AlwaysSamplePolicyConfig],
    Field(discriminator="type"),
]


def _default_policies() -> list:
    return [
        StatusCodePolicyConfig(name="errors", type="status_code"),
        LatencyPolicyConfig(name="slow", type="latency", threshold_ms=1000),
        ProbabilisticPolicyConfig(name="baseline", type="probabilistic", sampling_percentage=5),
    ]


class SamplingConfig(_Strict):
    policies: list[PolicyConfig] = Field(default_factory=_default_policies, min_length=1)

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, policies: list) -> list:
        seen: set[str] = set()
        for p in policies:
            if p.name in seen:
                raise ValueError(f"policy name {p.name!r} is used twice")
            seen.add(p.name)
        return policies


class SliConfig(_Strict):
    window_seconds: float = Field(10, gt=0, le=86_400)
    grace_seconds: float = Field(5, ge=0, le=3_600, description="wait past a window's end for stragglers")
    relative_accuracy: float = Field(0.01, gt=0, lt=1)
    max_services: int = Field(1_000, ge=1)


class JobConfig(_Strict):
    data_dir: str = Field("/tmp/tailsift", description="Faust state directory")
    tick_ms: int = Field(200, ge=10, le=60_000, description="how often decision points and windows are checked")
    batch_max_messages: int = Field(500, ge=1, le=100_000, description="messages handled per agent step")
    batch_within_ms: int = Field(50, ge=1, le=10_000)
    commit_interval_ms: int = Field(1_000, ge=100, le=600_000)
    worker_id: str = Field("", description="name in SLI records; default host:pid")


class MetricsConfig(_Strict):
    port: int = Field(9108, ge=0, le=65_535, description="0 disables the /metrics endpoint")
    host: str = "127.0.0.1"


class Config(_Strict):
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    assemble: AssembleConfig = AssembleConfig()
    sampling: SamplingConfig = SamplingConfig()
    sli: SliConfig = SliConfig()
    job: JobConfig = JobConfig()
    metrics: MetricsConfig = MetricsConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @model_validator(mode="after")
    def _distinct_topics(self) -> "Config":
        names: dict[str, str] = {}
        for key, topic in self.topics.all().items():
            if topic.name in names:
                raise ValueError(f"topics.{key} and topics.{names[topic.name]} both name {topic.name!r}")
            names[topic.name] = key
        return self


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem{'s' * (exc.error_count() > 1)})"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Configuration')"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


_UNION_TAGS = {"status_code", "latency", "probabilistic", "always_sample"}


def parse(data: object, source: str = "<config>") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    env_bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env_bootstrap:
        config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"bootstrap_servers": env_bootstrap})})
    return config


def load(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file; raises ConfigError with a readable message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse(data, str(p))
