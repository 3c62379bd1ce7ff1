"""tailsift's YAML configuration: models, defaults, validation with errors that name the key.

Secrets never live here: tokenization keys and Kafka passwords come from the environment or a file
(see README).
``KAFKA_BOOTSTRAP_SERVERS`` in the environment overrides ``kafka.bootstrap_servers``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from operators.policies.rules import OPERATORS as RULE_OPERATORS
from pipeline import config_collector as collector
from pipeline.config_base import Strict, require_unique_names
from pipeline.config_kafka import KafkaConfig
from pipeline.config_privacy import PrivacyConfig


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file, the key and the problem."""


class TopicConfig(Strict):
    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(6, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=32)
    retention_ms: int | None = Field(None, ge=-1, description="-1 = forever; unset = broker default")
    compacted: bool = False


class TopicsConfig(Strict):
    spans_raw: TopicConfig = TopicConfig(name="spans.raw", partitions=6, retention_ms=86_400_000)
    traces_kept: TopicConfig = TopicConfig(name="traces.kept", partitions=6)
    sli_windows: TopicConfig = TopicConfig(name="sli.windows", partitions=3)
    deadletter: TopicConfig = TopicConfig(name="spans.deadletter", partitions=1, retention_ms=604_800_000)
    pii_audit: TopicConfig = TopicConfig(name="pii.audit", partitions=1)
    # one partition per spans_raw partition: decisions of input partition p are written to, and
    # restored from, partition p (compacted: latest decision per trace ID; retention bounds its size)
    decisions: TopicConfig = TopicConfig(name="traces.decisions", partitions=6, compacted=True, retention_ms=86_400_000)
    # written by `tailsift aggregate` as changelogs of its tables, so partition p of each holds what
    # partition p of sli_windows produced: same partition count as sli_windows (checked below)
    sli_merged: TopicConfig = TopicConfig(name="sli.merged", partitions=3, retention_ms=604_800_000)
    slo_status: TopicConfig = TopicConfig(name="slo.status", partitions=3, compacted=True)

    def all(self) -> dict[str, TopicConfig]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class AssembleConfig(Strict):
    decision_wait_ms: int = Field(5_000, ge=0, le=3_600_000, description="wait after a trace's first span")
    root_quiet_gap_ms: int = Field(
        2_000,
        ge=0,
        le=3_600_000,
        description="decide earlier once the root span arrived and the trace was quiet this long; 0 = off",
    )
    time: Literal["processing", "event"] = Field(
        "processing",
        description="processing: decision points on the worker's clock (live traffic); event: on span end "
        "times with per-partition watermarks, so a replay of recorded data decides the same way",
    )
    allowed_lateness_ms: int = Field(
        1_000,
        ge=0,
        le=3_600_000,
        description="event time: the watermark trails the newest span end time seen on a partition by this much",
    )
    idle_partition_ms: int = Field(
        10_000,
        ge=100,
        le=3_600_000,
        description="event time: a partition that received nothing for this long (worker clock) decides all its traces",
    )
    backlog_wait_factor: float = Field(
        10.0,
        ge=1.0,
        le=1_000.0,
        description="processing time: a trace whose partition is read behind real time also waits until the "
        "partition is read decision_wait_ms past its first message (Kafka timestamps) or caught up (with "
        "group_read_time, every other input partition too) — at most this many decision_wait_ms after its "
        "first span arrived, then it is decided (forced=backlog_limit); 1 = off (the worker clock alone)",
    )
    group_read_time: bool | Literal["auto"] = Field(
        "auto",
        description="processing time: decisions also wait for the group's read time — every other input "
        "partition read past the trace's first timestamp + decision_wait_ms, so spans re-keyed from there "
        "have arrived. auto: only partitions whose readers re-keyed a message in the last hour (their "
        "checkpoints say so), never with ingest.rekey false — keyed input waits for nothing; true: every "
        "partition; false: none. Waiting costs ~1.5-2.5 s of decision latency live and holds decisions to "
        "the slowest re-keying partition in a drain (README 'Sampling semantics')",
    )
    max_buffered_spans: int = Field(1_000_000, ge=1, description="global bound on spans awaiting a decision")
    max_buffered_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="global bound on raw bytes awaiting a decision"
    )
    overflow: Literal["backpressure", "force_decision"] = Field(
        "backpressure",
        description="at a bound: pause the input partitions until decisions drain (Kafka holds the data), "
        "or decide the oldest traces early",
    )
    max_spans_per_trace: int = Field(10_000, ge=1, description="a trace reaching it is decided at once")
    max_trace_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="a trace whose raw bytes reach it is decided at once"
    )
    decision_cache_size: int = Field(
        100_000, ge=0, description="recent kept decisions remembered in memory for late spans"
    )
    dropped_cache_size: int = Field(
        1_000_000, ge=0, description="recent dropped decisions remembered (compact filter, ~70 B each)"
    )
    decision_restore_ms: int = Field(
        600_000,
        ge=0,
        le=7 * 86_400_000,
        description="on partition assignment, restore decisions made this long before the "
        "partition's committed input offset from topics.decisions; 0 = no restore",
    )


class _PolicyBase(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class StatusCodePolicyConfig(_PolicyBase):
    type: Literal["status_code"]
    status_codes: list[Literal["ERROR", "OK", "UNSET"]] = Field(default_factory=lambda: ["ERROR"], min_length=1)


class LatencyPolicyConfig(_PolicyBase):
    type: Literal["latency"]
    threshold_ms: float = Field(gt=0)
    upper_threshold_ms: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LatencyPolicyConfig:
        if self.upper_threshold_ms is not None and self.upper_threshold_ms <= self.threshold_ms:
            raise ValueError("upper_threshold_ms must be greater than threshold_ms")
        return self


class ProbabilisticPolicyConfig(_PolicyBase):
    type: Literal["probabilistic"]
    sampling_percentage: float = Field(gt=0, le=100)
    hash_salt: str = Field(
        "", max_length=64, description="randomness from a salted hash of the trace ID instead of OTEP 235 R"
    )


class AlwaysSamplePolicyConfig(_PolicyBase):
    type: Literal["always_sample"]


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


class StringAttributePolicyConfig(_PolicyBase):
    type: Literal["string_attribute"]
    key: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)
    enabled_regex_matching: bool = False
    invert_match: bool = False

    @model_validator(mode="after")
    def _regexes_compile(self) -> StringAttributePolicyConfig:
        if self.enabled_regex_matching:
            for i, v in enumerate(self.values):
                _check_regex(v, f"values.{i}")
        return self


class NumericAttributePolicyConfig(_PolicyBase):
    type: Literal["numeric_attribute"]
    key: str = Field(min_length=1)
    min_value: float | None = None
    max_value: float | None = None
    invert_match: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> NumericAttributePolicyConfig:
        if self.min_value is None and self.max_value is None:
            raise ValueError("set min_value, max_value or both")
        if self.min_value is not None and self.max_value is not None and self.max_value < self.min_value:
            raise ValueError("max_value must not be below min_value")
        return self


class BooleanAttributePolicyConfig(_PolicyBase):
    type: Literal["boolean_attribute"]
    key: str = Field(min_length=1)
    value: bool
    invert_match: bool = False


class SpanCountPolicyConfig(_PolicyBase):
    type: Literal["span_count"]
    min_spans: int = Field(ge=0)
    max_spans: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> SpanCountPolicyConfig:
        if self.max_spans is not None and self.max_spans < self.min_spans:
            raise ValueError("max_spans must not be below min_spans")
        return self


class TraceStatePolicyConfig(_PolicyBase):
    type: Literal["trace_state"]
    key: str = Field(min_length=1, max_length=256)
    values: list[str] = Field(min_length=1)


class RateLimitingPolicyConfig(_PolicyBase):
    type: Literal["rate_limiting"]
    spans_per_second: float | None = Field(None, gt=0)
    traces_per_second: float | None = Field(None, gt=0)
    burst_capacity: float | None = Field(None, gt=0, description="hard cap's bucket size; default 2 s of the rate")
    adjust_interval_ms: int = Field(1000, ge=10, le=3_600_000)

    @model_validator(mode="after")
    def _one_rate(self) -> RateLimitingPolicyConfig:
        if (self.spans_per_second is None) == (self.traces_per_second is None):
            raise ValueError("set exactly one of spans_per_second, traces_per_second")
        return self


class BytesLimitingPolicyConfig(_PolicyBase):
    type: Literal["bytes_limiting"]
    bytes_per_second: float = Field(gt=0)
    burst_capacity: float | None = Field(None, gt=0, description="bucket size in bytes; default 2 s of the rate")
    adjust_interval_ms: int = Field(1000, ge=10, le=3_600_000)


class AndPolicyConfig(_PolicyBase):
    type: Literal["and"]
    policies: list[PolicyConfig] = Field(min_length=1)


class NotPolicyConfig(_PolicyBase):
    type: Literal["not"]
    policy: PolicyConfig

    @model_validator(mode="after")
    def _condition_only(self) -> NotPolicyConfig:
        problem = collector.not_problem(self.policy)
        if problem:
            raise ValueError(problem)
        return self


class DropPolicyConfig(_PolicyBase):
    type: Literal["drop"]
    policies: list[PolicyConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _conditions_only(self) -> DropPolicyConfig:
        for problem in collector.drop_problems(self.policies):
            raise ValueError(problem)
        return self


class RateAllocationConfig(Strict):
    policy: str
    percent: float = Field(gt=0, le=100)


class CompositePolicyConfig(_PolicyBase):
    type: Literal["composite"]
    max_total_spans_per_second: float = Field(gt=0)
    policies: list[PolicyConfig] = Field(min_length=1)
    policy_order: list[str] | None = None
    rate_allocation: list[RateAllocationConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> CompositePolicyConfig:
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError("sub-policy names must be unique")
        for ref in (self.policy_order or []) + [a.policy for a in self.rate_allocation]:
            if ref not in names:
                raise ValueError(f"{ref!r} is not one of the sub-policies {names}")
        if self.policy_order is not None and sorted(self.policy_order) != sorted(names):
            raise ValueError("policy_order must list every sub-policy once")
        if sum(a.percent for a in self.rate_allocation) > 100 + 1e-9:
            raise ValueError("rate_allocation percentages add up to more than 100")
        for problem in collector.composite_problems(self.policy_order or names, {p.name: p for p in self.policies}):
            raise ValueError(problem)
        return self


# one list: the operator validates against the same tuple it dispatches on
RuleOperator = Literal[RULE_OPERATORS]  # type: ignore[valid-type]


class RuleConditionConfig(Strict):
    field: str | None = Field(None, min_length=1)
    operator: RuleOperator
    value: bool | int | float | str | list[bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _shape(self) -> RuleConditionConfig:
        op = self.operator
        if op != "has-root-span" and self.field is None:
            raise ValueError(f"operator {op!r} needs a field")
        if op in ("exists", "not-exists"):
            return self
        if op == "has-root-span":
            if self.value is not None and not isinstance(self.value, bool):
                raise ValueError("has-root-span takes value true or false")
            return self
        if self.value is None:
            raise ValueError(f"operator {op!r} needs a value")
        if op in ("in", "not-in") and not isinstance(self.value, list):
            raise ValueError(f"operator {op!r} needs a list value")
        if op not in ("in", "not-in") and isinstance(self.value, list):
            raise ValueError(f"operator {op!r} needs a single value")
        if op in (">", "<", ">=", "<=") and (isinstance(self.value, bool) or not isinstance(self.value, (int, float))):
            raise ValueError(f"operator {op!r} needs a number")
        if op == "matches":
            _check_regex(str(self.value), "value")
        return self


class RuleConfig(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    conditions: list[RuleConditionConfig] = Field(default_factory=list)
    scope: Literal["trace", "span"] = "trace"
    sample_rate: float | None = Field(None, ge=1, description="keep 1 in N (default 1 = keep)")
    drop: bool = False
    sampler: str | None = Field(None, description="name of a sampler under the policy's samplers")

    @model_validator(mode="after")
    def _one_outcome(self) -> RuleConfig:
        if sum((self.sample_rate is not None, self.drop, self.sampler is not None)) > 1:
            raise ValueError("a rule has one outcome: sample_rate, drop or sampler")
        return self


class RulesBasedPolicyConfig(_PolicyBase):
    type: Literal["rules_based"]
    rules: list[RuleConfig] = Field(min_length=1)
    samplers: list[PolicyConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> RulesBasedPolicyConfig:
        names = {s.name for s in self.samplers}
        if len(names) != len(self.samplers):
            raise ValueError("sampler names must be unique")
        for i, r in enumerate(self.rules):
            if r.sampler is not None and r.sampler not in names:
                raise ValueError(f"rules.{i}.sampler: no sampler named {r.sampler!r} (have {sorted(names)})")
        return self


class _KeyedPolicyBase(_PolicyBase):
    field_list: list[str] = Field(min_length=1, description="key fields: header fields, attributes, root.<x>, error")
    max_keys: int = Field(500, ge=1, le=1_000_000)


class DynamicPolicyConfig(_KeyedPolicyBase):
    type: Literal["dynamic"]
    sample_rate: float = Field(ge=1, description="goal: keep about 1 in sample_rate traces")
    clear_frequency_s: float = Field(30, gt=0, le=86_400)


class _EmaPolicyBase(_KeyedPolicyBase):
    adjustment_interval_s: float = Field(15, gt=0, le=86_400)
    weight: float = Field(0.5, gt=0, le=1)
    age_out_value: float = Field(0.5, ge=0)
    burst_multiple: float = Field(2.0, gt=1)
    burst_detection_delay: int = Field(3, ge=0)


class EmaDynamicPolicyConfig(_EmaPolicyBase):
    type: Literal["ema_dynamic"]
    goal_sample_rate: float = Field(ge=1)


class EmaThroughputPolicyConfig(_EmaPolicyBase):
    type: Literal["ema_throughput"]
    goal_throughput_per_sec: float = Field(gt=0)


class WindowedThroughputPolicyConfig(_KeyedPolicyBase):
    type: Literal["windowed_throughput"]
    goal_throughput_per_sec: float = Field(gt=0)
    update_frequency_s: float = Field(1, gt=0, le=3_600)
    lookback_frequency_s: float = Field(30, gt=0, le=86_400)

    @model_validator(mode="after")
    def _ordered(self) -> WindowedThroughputPolicyConfig:
        if self.lookback_frequency_s < self.update_frequency_s:
            raise ValueError("lookback_frequency_s must be at least update_frequency_s")
        return self


class RarePathPolicyConfig(_PolicyBase):
    type: Literal["rare_path"]
    keep_per_window: float = Field(5, gt=0, description="about this many traces of each shape kept per window")
    window_s: float = Field(60, gt=0, le=86_400)
    min_probability: float = Field(0, ge=0, le=1)
    sketch_width: int = Field(2048, ge=16, le=1 << 22)
    sketch_depth: int = Field(4, ge=1, le=16)
    multiplicity: bool = False


PolicyConfig = Annotated[
    (
        StatusCodePolicyConfig
        | LatencyPolicyConfig
        | ProbabilisticPolicyConfig
        | AlwaysSamplePolicyConfig
        | StringAttributePolicyConfig
        | NumericAttributePolicyConfig
        | BooleanAttributePolicyConfig
        | SpanCountPolicyConfig
        | TraceStatePolicyConfig
        | RateLimitingPolicyConfig
        | BytesLimitingPolicyConfig
        | AndPolicyConfig
        | NotPolicyConfig
        | DropPolicyConfig
        | CompositePolicyConfig
        | RulesBasedPolicyConfig
        | DynamicPolicyConfig
        | EmaDynamicPolicyConfig
        | EmaThroughputPolicyConfig
        | WindowedThroughputPolicyConfig
        | RarePathPolicyConfig
    ),
    Field(discriminator="type"),
]

for _combinator in (AndPolicyConfig, NotPolicyConfig, DropPolicyConfig, CompositePolicyConfig, RulesBasedPolicyConfig):
    _combinator.model_rebuild()


def _default_policies() -> list:
    return [
        StatusCodePolicyConfig(name="errors", type="status_code"),
        LatencyPolicyConfig(name="slow", type="latency", threshold_ms=1000),
        ProbabilisticPolicyConfig(name="baseline", type="probabilistic", sampling_percentage=5),
    ]


class SamplingConfig(Strict):
    policies: list[PolicyConfig] = Field(default_factory=_default_policies, min_length=1)
    mode: Literal["any_match", "first_match"] = Field(
        "any_match", description="any_match: kept if any policy keeps; first_match: the first applying policy decides"
    )
    dry_run: bool = Field(False, description="decide and annotate (sampling.dry_run_kept) but keep every trace")
    follow_links: bool = Field(
        False,
        description="keep a trace that a kept trace's span links to, if this worker still "
        "buffers it (adjusted count 0: context, not a sample)",
    )

    @field_validator("policies", mode="wrap")
    @classmethod
    def _name_the_policy(cls, value, handler):
        """Errors inside a policy name it: ``sampling.policies.1(slow).threshold_ms``."""
        try:
            return handler(value)
        except ValidationError as exc:
            errors = []
            for err in exc.errors():
                loc, node = [], value
                for part in err["loc"]:
                    if isinstance(part, int) and isinstance(node, list) and part < len(node):
                        node = node[part]
                        name = node.get("name") if isinstance(node, dict) else None
                        loc.append(f"{part}({name})" if isinstance(name, str) and name else part)
                        continue
                    if isinstance(node, dict) and part in node:
                        node = node[part]
                    elif not (isinstance(part, str) and part in _UNION_TAGS):
                        node = None
                    loc.append(part)
                errors.append(
                    InitErrorDetails(type=err["type"], loc=tuple(loc), input=err["input"], ctx=err.get("ctx", {}))
                )
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, policies: list) -> list:
        return require_unique_names(policies, "policy")

    @model_validator(mode="after")
    def _no_top_level_invert_match(self) -> SamplingConfig:
        for i, policy in enumerate(self.policies):
            problem = collector.top_level_invert_problem(policy)
            if problem:
                raise ValueError(f"sampling.policies.{i}({policy.name}).invert_match: {problem}")
        return self


class SliConfig(Strict):
    # At least 1 ms: below 1 ns the window is 0 ns wide (every ingest divided by zero), and
    # sub-millisecond windows would open a window per span and hold them for the whole grace.
    window_seconds: float = Field(10, ge=0.001, le=86_400, description="at least 0.001 (1 ms)")
    grace_seconds: float = Field(5, ge=0, le=3_600, description="wait past a window's end for stragglers")
    relative_accuracy: float = Field(0.01, gt=0, lt=1)
    max_services: int = Field(1_000, ge=1)
    max_operations_per_service: int = Field(
        200, ge=1, description="distinct sanitized span names per service; then __other__"
    )


class SloBurnAlertConfig(Strict):
    long_window: str = Field(pattern=r"^\d+[smhd]$", description="e.g. 1h")
    short_window: str = Field(pattern=r"^\d+[smhd]$", description="e.g. 5m")
    factor: float = Field(gt=0, description="burn-rate threshold, e.g. 14.4")
    severity: str = Field("page", pattern=r"^[a-z][a-z0-9_-]*$")


class SloObjectiveConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")
    service: str = Field(min_length=1)
    operation: str = Field("*", description="sanitized operation name; * = all")
    span_kind: str = Field("*", description="SERVER, CONSUMER, …; * = all")
    type: Literal["availability", "latency"] = "availability"
    objective_percent: float = Field(gt=0, lt=100, description="e.g. 99.9")
    threshold_ms: float = Field(0, ge=0, description="latency SLOs: a span slower than this is bad")
    period_days: float = Field(30, gt=0, le=366)
    alerts: list[SloBurnAlertConfig] | None = Field(
        None, description="default: 1h/5m 14.4x, 6h/30m 6x (page); 1d/2h 3x, 3d/6h 1x (ticket)"
    )

    @model_validator(mode="after")
    def _latency_needs_threshold(self):
        if self.type == "latency" and self.threshold_ms <= 0:
            raise ValueError("a latency SLO needs threshold_ms > 0")
        return self


class SloConfig(Strict):
    objectives: list[SloObjectiveConfig] = []

    @field_validator("objectives")
    @classmethod
    def _unique_names(cls, objectives: list) -> list:
        return require_unique_names(objectives, "SLO")


class JobConfig(Strict):
    data_dir: str = Field("/tmp/tailsift", description="local state directory (the aggregation stage's Faust tables)")
    tick_ms: int = Field(
        200,
        ge=10,
        le=60_000,
        description="at_least_once: how often windows close, writes are acknowledged and offsets committed "
        "(exactly_once: every commit interval); due traces are written at every loop step",
    )
    batch_max_messages: int = Field(
        500,
        ge=1,
        le=100_000,
        description="most messages taken per consume() call (fewer under job.step_budget_ms)",
    )
    batch_within_ms: int = Field(50, ge=1, le=10_000, description="longest wait for a batch to fill")
    step_budget_ms: int = Field(
        0,
        ge=0,
        le=60_000,
        description="while a backlog is read, take fewer messages per consume() so a loop step lasts about "
        "this long (lower decision latency under a drain, more CPU per span: more steps and commits on "
        "time); 0 = whole batches",
    )
    commit_interval_ms: int = Field(1_000, ge=100, le=600_000)
    worker_id: str = Field("", description="name in SLI records and part of the transactional id; default host:pid")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="exactly_once: outputs, decisions and the partition checkpoint are written in one Kafka "
        "transaction per commit interval; at_least_once: no transactions, outputs may repeat after a crash",
    )
    transaction_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        le=900_000,
        description="how long the broker waits before aborting a dead worker's open transaction",
    )
    core: Literal["auto", "native", "python"] = Field(
        "auto",
        description="the ingest decoders: native (the Rust core, pipeline._native) or python (the reference); "
        "auto: native when it is built and ingest.format is avro or otlp_proto, else python",
    )


class AggregateConfig(Strict):
    grace_seconds: float = Field(
        15,
        ge=0,
        le=86_400,
        description="a merged window is emitted once the stage's event time passes its end by this much; "
        "cover sli.grace_seconds + job.commit_interval_ms + clock skew between workers",
    )
    idle_seconds: float = Field(
        10,
        gt=0,
        le=86_400,
        description="a partition of sli_windows with no new partial for this long: its event time follows "
        "the stage's clock minus this much (so the last windows close when traffic stops)",
    )
    tick_ms: int = Field(1_000, ge=50, le=60_000, description="how often idle partitions are checked")
    recovery_poll_ms: int = Field(
        1_000,
        ge=100,
        le=60_000,
        description="after a rebalance, a changelog whose last record is read is taken as restored once its "
        "queue stayed empty for two of these in a row (Faust's own wait: 5,000)",
    )
    max_open_windows: int = Field(
        100_000,
        ge=1,
        description="merged windows held open per stage process; beyond it the oldest are emitted early "
        "(later partials of them follow as further records)",
    )
    closed_memory_seconds: float = Field(
        600,
        gt=0,
        le=86_400,
        description="an emitted window's marker (the source offsets it merged) stays this long past its "
        "grace, so a partial re-read after a crash is not counted again; must exceed a commit interval",
    )
    emitted_memory: int = Field(
        100_000, ge=1, description="recent sli_merged record keys remembered to recognise a replayed emission"
    )
    web_host: str = Field("127.0.0.1", description="Faust web views /sli, /slo, /metrics, /healthz")
    web_port: int = Field(6066, ge=1, le=65_535)
    data_dir: str = Field("/tmp/tailsift-aggregate", description="Faust's state directory for the stage")


class MetricsConfig(Strict):
    port: int = Field(9108, ge=0, le=65_535, description="0 disables the /metrics endpoint")
    host: str = "127.0.0.1"


WireFormat = Literal["avro", "otlp_proto", "otlp_json"]


class IngestConfig(Strict):
    format: WireFormat = Field(
        "avro", description="spans_raw values: Avro SpanBatch or an OTLP ExportTraceServiceRequest"
    )
    rekey: bool = Field(
        True,
        description="re-publish messages off their traces' canonical partition there, one copy per "
        "destination partition (a single trace's keyed by its trace ID); false: buffer every trace "
        "of a message where it arrives",
    )
    partitioning: Literal["tailsift", "collector"] = Field(
        "tailsift",
        description="where a trace's spans belong on spans_raw: tailsift = keyed by the 16 trace-ID bytes, "
        "murmur2 (the Java client's default); collector = keyed by the 32 hex characters, Sarama's FNV-1a hash "
        "(the OTel Collector kafka exporter with partition_traces_by_id: true) — its messages then need no "
        "re-keyed copy. Re-keyed copies follow the same rule",
    )
    max_clock_skew_ms: int = Field(
        300_000,
        ge=0,
        le=86_400_000,
        description="a span may end at most this far ahead of the worker clock (and start at most this "
        "long after it ends); beyond it the message is dead-lettered as invalid_timestamp",
    )
    max_span_bytes: int = Field(
        524_288,
        ge=1_024,
        le=64 << 20,
        description="a message with a span larger than this (its encoded size in the input format) is "
        "dead-lettered as span_too_large: no output record could carry it, and it costs every stage",
    )
    max_attributes_per_span: int = Field(
        1_000,
        ge=1,
        le=1_000_000,
        description="a message with a span carrying more attributes than this is dead-lettered as "
        "too_many_attributes (decode, PII scan and memory of a kept trace grow with each)",
    )


class EmitConfig(Strict):
    format: WireFormat = Field(
        "avro", description="traces_kept values: Avro KeptTrace or an OTLP ExportTraceServiceRequest"
    )


class Config(Strict):
    ingest: IngestConfig = IngestConfig()
    emit: EmitConfig = EmitConfig()
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    assemble: AssembleConfig = AssembleConfig()
    sampling: SamplingConfig = SamplingConfig()
    sli: SliConfig = SliConfig()
    slo: SloConfig = SloConfig()
    job: JobConfig = JobConfig()
    metrics: MetricsConfig = MetricsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    aggregate: AggregateConfig = AggregateConfig()

    @model_validator(mode="after")
    def _exactly_once_needs_its_dedup(self) -> Config:
        """exactly_once drops replayed fragments of already-decided traces by their decision: the
        decision cache and the on-assignment restore are what remember it."""
        if self.job.processing_guarantee != "exactly_once":
            return self
        a = self.assemble
        if a.decision_cache_size == 0:
            raise ValueError(
                "assemble.decision_cache_size: 0 turns off the decision cache, and with it the dedup of "
                "job.processing_guarantee: exactly_once (replayed or late spans of a kept trace would be "
                "decided again); give it >= 1 or use processing_guarantee: at_least_once"
            )
        if a.decision_restore_ms == 0:
            raise ValueError(
                "assemble.decision_restore_ms: 0 restores no decisions on partition assignment, so "
                "job.processing_guarantee: exactly_once would decide replayed traces again after a "
                "rebalance or restart; give it > 0 or use processing_guarantee: at_least_once"
            )
        return self

    @model_validator(mode="after")
    def _native_core_can_run(self) -> Config:
        if self.job.core != "native":
            return self
        from pipeline.codecs import native

        if not native.AVAILABLE:
            raise ValueError(
                "job.core: native, but the native core is not built (no Rust toolchain when tailsift was "
                "installed: see README Requirements); use job.core: python or auto"
            )
        if self.ingest.format not in native.FORMATS:
            raise ValueError(
                f"job.core: native decodes ingest.format {' or '.join(native.FORMATS)}, not "
                f"{self.ingest.format}; use job.core: python or auto"
            )
        return self

    def ingest_core(self) -> Literal["native", "python"]:
        """The decoders the job uses: ``job.core``, with ``auto`` resolved."""
        if self.job.core != "auto":
            return self.job.core
        if auto_core_override() == "python":
            return "python"
        from pipeline.codecs import native

        return "native" if native.AVAILABLE and self.ingest.format in native.FORMATS else "python"

    @model_validator(mode="after")
    def _distinct_topics(self) -> Config:
        names: dict[str, str] = {}
        for key, topic in self.topics.all().items():
            if topic.name in names:
                raise ValueError(f"topics.{key} and topics.{names[topic.name]} both name {topic.name!r}")
            names[topic.name] = key
        if self.topics.decisions.partitions != self.topics.spans_raw.partitions:
            raise ValueError(
                f"topics.decisions.partitions ({self.topics.decisions.partitions}) must equal "
                f"topics.spans_raw.partitions ({self.topics.spans_raw.partitions}): decisions of input "
                "partition p live in decision-log partition p"
            )
        windows = self.topics.sli_windows.partitions
        for key in ("sli_merged", "slo_status"):
            have = getattr(self.topics, key).partitions
            if have != windows:
                raise ValueError(
                    f"topics.{key}.partitions ({have}) must equal topics.sli_windows.partitions ({windows}): "
                    "the aggregate stage writes partition p's results to partition p (Faust changelogs)"
                )
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


def _policy_types() -> dict[str, type[_PolicyBase]]:
    """Policy type tag → its config model, read from the ``PolicyConfig`` union (the one list)."""
    union = get_args(PolicyConfig)[0]
    return {get_args(model.model_fields["type"].annotation)[0]: model for model in get_args(union)}


POLICY_TYPES = _policy_types()
_UNION_TAGS = frozenset(POLICY_TYPES)  # pydantic's discriminator steps in error locations, left out


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
        config = config.model_copy(
            update={"kafka": config.kafka.model_copy(update={"bootstrap_servers": env_bootstrap})}
        )
    return config


AUTO_CORE_ENV = "TAILSIFT_AUTO_CORE"


def auto_core_override() -> str:
    """What ``job.core: auto`` means in this process: ``TAILSIFT_AUTO_CORE=python`` makes it the
    Python reference (``make test-python-core`` runs the whole suite so: issue 17 holds both cores
    to it), unset or empty leaves it the native core when built. An explicit ``job.core`` wins."""
    value = os.environ.get(AUTO_CORE_ENV, "").strip()
    if value not in ("", "python"):
        raise ConfigError(f"{AUTO_CORE_ENV}={value!r}: the only value it takes is python (or unset)")
    return value


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
