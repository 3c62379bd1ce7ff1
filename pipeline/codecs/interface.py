"""The one interface the job ingests through: every wire format of ``spans.raw`` (Avro SpanBatch,
OTLP proto and JSON) — and a native codec written against the same names — turns a message value
into ``Fragment``s, one per trace it holds, and back into bytes for the two paths that need them:
re-keying (``split``) and kept traces (``kept_batches`` → protection → ``encode_kept``).

Lazy by contract: ``decode`` builds only the span headers decisions and SLIs read
(``operators.trace.SpanHeader``); attributes, events and links stay encoded until a policy asks
(``decode_detail``) or the trace is kept (``kept_batches``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Malformed(Exception):
    """A message the job must not take: dead-lettered with ``reason`` (a short label, counted in
    metrics) and ``detail`` (lengths, positions and bounds — never payload bytes: it goes to the
    dead-letter topic and to logs)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Fragment:
    """One trace's spans from one message."""

    trace_id: bytes
    groups: list[tuple[str, list[dict]]]  # (service, span header dicts) in message order
    span_count: int
    handle: Any = None  # codec-specific (may be None): what split / the kept path re-decode from

    def spans(self) -> list[dict]:
        """Every span header of the fragment (the one group's list itself when there is one)."""
        groups = self.groups
        if len(groups) == 1:
            return groups[0][1]
        return [span for _, spans in groups for span in spans]


@dataclass(slots=True)
class Rekeyed:
    """A message off its traces' canonical partition, as placement (``pipeline.job.rekey.place``,
    or a native codec's ``decode_placed``) found it: ``parts`` are its copies to publish on the
    input topic — (key, partition or None: by key, value; the value is the message itself when it
    holds one trace). With the partition count known, one copy per destination partition, in the
    order its first trace appears: keyed by that trace when it holds one, else key None (placed by
    its partition); unknown, one per trace in first-seen order, keyed. ``parts`` is None when a
    copy would be larger than a record may be: the job then buffers ``fragments`` where the message
    arrived."""

    parts: list[tuple[bytes | None, int | None, bytes]] | None
    fragments: list[Fragment] | None = None


@dataclass(frozen=True, slots=True)
class SpanLimits:
    """Per-span bounds checked at ingest (``ingest.max_span_bytes``, ``ingest.max_attributes_per_span``).

    Checked cheaply: a message no larger than a bound cannot hold a span past it, so only larger
    messages look at their spans — an Avro span's size is its detail's length (free: a separate
    byte string), its attribute count the attribute map's block header; an OTLP span's are the
    protobuf's own (``ByteSize``, the repeated field's length)."""

    max_span_bytes: int = 1 << 62
    max_attributes: int = 1 << 62
    # the fewest bytes one attribute takes encoded (Avro: key length + union index; protobuf: tag +
    # length): a message shorter than max_attributes times this cannot hold a span past the bound
    MIN_ATTRIBUTE_BYTES = 2

    def may_exceed_bytes(self, message_bytes: int) -> bool:
        return message_bytes > self.max_span_bytes

    def may_exceed_attributes(self, message_bytes: int) -> bool:
        return message_bytes > self.MIN_ATTRIBUTE_BYTES * self.max_attributes

    def too_large(self, where: str, size: int) -> Malformed:
        return Malformed(
            "span_too_large", f"{where} is {size} bytes encoded, over ingest.max_span_bytes = {self.max_span_bytes}"
        )

    def too_many_attributes(self, where: str, count: int) -> Malformed:
        return Malformed(
            "too_many_attributes",
            f"{where} has {count} attributes, over ingest.max_attributes_per_span = {self.max_attributes}",
        )


@dataclass(slots=True)
class KeptFacts:
    """The decision's facts a kept record carries beside its spans."""

    trace_id: bytes
    policy: str
    reason: str
    adjusted_count: float
    decided_at_ns: int
    late: bool


@dataclass(slots=True)
class KeptBatches:
    """One message's spans of a kept trace, fully decoded into KeptTrace-shaped batch dicts
    (``trace_id``, ``service``, ``spans``, ``resource``, ``scope_name``; OTLP-only fields under
    ``otlp.*``), not yet protected. Parts that did not decode are kept empty and listed, so the job
    annotates them *after* protection and reports the message (``problem``, for the dead letter)."""

    batches: list[dict]
    undecodable_spans: list[dict] = field(default_factory=list)  # their detail did not decode
    undecodable_resources: list[dict] = field(default_factory=list)  # batches whose resource did not
    problem: str = ""  # why, for the dead-letter detail ("" = everything decoded)


class Codec(Protocol):
    """A wire format of the input (``decode``, ``split``, ``decode_trace``, ``decode_detail``,
    ``kept_batches``) and of the kept output (``encode_kept``)."""

    name: str

    def decode(self, value: bytes, now_ns: int) -> list[Fragment]:
        """The message's traces, headers only, validated (ids, times, configured limits); raises
        ``Malformed(reason, detail)``. A non-empty list: a message without spans is malformed."""
        ...

    def decode_trace(self, value: bytes, trace_id: bytes) -> Fragment:
        """Headers and handle of one trace of a message ``decode`` accepted before (the decision
        re-decodes instead of buffering decoded spans: memory). Not validated again."""
        ...

    def split(self, value: bytes, fragments: list[Fragment]) -> bytes:
        """A message holding only these fragments' traces — some of the fragments ``decode`` gave
        for ``value``, in its order — (for re-keying: one copy per destination partition); ``value``
        itself when it holds that one trace only."""
        ...

    def decode_detail(self, detail: Any) -> dict:
        """A span header's ``detail`` → at least its ``attributes`` (policies that read them)."""
        ...

    def kept_batches(self, value: bytes, handle: Any) -> KeptBatches:
        """A fragment's spans fully decoded for output, from its ``handle`` (as ``decode`` or
        ``decode_trace`` made it; the job buffers it as ``Buffered.handle``). May consume the
        handle. Raises ``Malformed`` for a span that cannot be written in any format."""
        ...

    def encode_kept(self, facts: KeptFacts, batches: list[dict], part: int = 0, parts: int = 1) -> bytes:
        """One kept record (part ``part`` of ``parts``) holding protected ``batches``."""
        ...


def safe_text(exc: BaseException) -> str:
    """A decoder's message, cut short and stripped of anything that may echo payload bytes."""
    text = str(exc)
    if len(text) > 120 or any(ord(c) < 32 or ord(c) > 126 for c in text):
        return "(message withheld: may contain payload bytes)"
    return text
