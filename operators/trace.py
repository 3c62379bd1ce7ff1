"""The view of one buffered trace that policies evaluate.

Everything a policy reads comes from here. Header facts (status, times, names, services) cost
nothing extra; span attributes live in each span's encoded ``detail`` and are decoded lazily, on
the first request for that span, by a decoder the pipeline injects (operators import no codecs),
then cached — so a policy set without attribute rules never decodes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any, Generic, Protocol, TypedDict, TypeVar

from operators import randomness as rnd
from operators.tracestate import explicit_randomness


class SpanHeader(TypedDict, total=False):
    """What ingest decodes for every span (the rest stays encoded until the trace is kept)."""

    service: str
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: str  # UNSPECIFIED INTERNAL SERVER CLIENT PRODUCER CONSUMER
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: str  # UNSET OK ERROR
    trace_state: str
    detail: bytes  # encoded SpanDetail (status message, attributes, events, links)
    attributes: dict[str, Any]  # already decoded (tests, or a decoded record): no detail to decode


DetailDecoder = Callable[[bytes], dict]


class TraceFacts(Protocol):
    """Header facts of a trace computed elsewhere in one pass over its spans (the native core's
    ``pipeline._native.TraceFacts``), with the span headers built only when asked for. Each fact
    is what the view computes from the span dicts (``TraceView.from_facts``)."""

    @property
    def span_count(self) -> int: ...
    @property
    def has_error(self) -> bool: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def trace_state(self) -> str: ...
    def spans(self) -> list[SpanHeader]: ...


# Header fields that attribute-style lookups resolve without decoding anything.
HEADER_FIELDS = {
    "service.name": "service",
    "service": "service",
    "name": "name",
    "span.name": "name",
    "kind": "kind",
    "span.kind": "kind",
    "status_code": "status_code",
    "status.code": "status_code",
}


T = TypeVar("T")

# the view's facts read one field of every span: map() with these runs the loop in C (a generator
# expression cost ~0.1 µs per span more, paid at every decision)
_STATUS: Callable[[SpanHeader], str] = itemgetter("status_code")
_START: Callable[[SpanHeader], int] = itemgetter("start_time_unix_nano")
_END: Callable[[SpanHeader], int] = itemgetter("end_time_unix_nano")


class cached_property(Generic[T]):  # noqa: N801 - a drop-in for functools.cached_property
    """``functools.cached_property`` without its lock: Python 3.11's takes an RLock on every first
    access, which was most of the cost of a policy reading a view fact once per decided trace
    (Python 3.12 dropped the lock for the same reason). A view is used by one thread."""

    def __init__(self, fn: Callable[[Any], T]):
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


class TraceView:
    """Read-only facts about a trace's spans, computed once on first use.

    ``now_ns`` is the decision time (policies with time-dependent state — rate limiters, adaptive
    samplers, sliding windows — read it instead of a clock, so they are deterministic in tests);
    it defaults to the trace's latest span end. ``size_bytes`` is the trace's encoded size (the
    job passes the Kafka value sizes; else the details' sizes plus a header estimate)."""

    def __init__(
        self,
        trace_id: bytes,
        spans: Iterable[SpanHeader],
        now_ns: int | None = None,
        size_bytes: int | None = None,
        decode_detail: DetailDecoder | None = None,
    ):
        self.trace_id = trace_id
        self.__dict__["spans"] = list(spans)
        self._now_ns = now_ns
        self._size_bytes = size_bytes
        self._decode_detail = decode_detail
        self._attrs: dict[int, dict] = {}
        self.decoded_details = 0  # how many span details were decoded for this view (tests, metrics)

    @classmethod
    def from_facts(
        cls,
        trace_id: bytes,
        facts: TraceFacts,
        now_ns: int | None = None,
        size_bytes: int | None = None,
        decode_detail: DetailDecoder | None = None,
    ) -> TraceView:
        """The view of a trace whose header facts were computed already (``TraceFacts``): the
        facts are taken as they are and ``spans`` is asked of ``facts`` only when a policy reads
        the spans themselves (attributes, the root span, names). Once per decided trace: the
        attributes are set directly, not through ``__init__``'s list."""
        view = cls.__new__(cls)
        d = view.__dict__
        d["trace_id"] = trace_id
        d["_facts"] = facts
        d["_now_ns"] = now_ns
        d["_size_bytes"] = size_bytes
        d["_decode_detail"] = decode_detail
        d["_attrs"] = {}
        d["decoded_details"] = 0
        d["span_count"] = facts.span_count
        d["has_error"] = facts.has_error
        d["start_ns"] = facts.start_ns
        d["end_ns"] = facts.end_ns
        d["trace_state"] = facts.trace_state
        return view

    @cached_property
    def spans(self) -> list[SpanHeader]:
        """The span headers (set by ``__init__``; from the facts' source in a ``from_facts`` view)."""
        facts: TraceFacts = self.__dict__["_facts"]
        return facts.spans()

    @cached_property
    def span_count(self) -> int:
        return len(self.spans)

    @property
    def now_ns(self) -> int:
        return self._now_ns if self._now_ns is not None else self.end_ns

    @cached_property
    def size_bytes(self) -> int:
        if self._size_bytes is not None:
            return self._size_bytes
        return sum(len(s.get("detail") or b"") + 48 + len(s.get("name", "")) for s in self.spans)

    @cached_property
    def has_error(self) -> bool:
        return "ERROR" in map(_STATUS, self.spans)

    @cached_property
    def start_ns(self) -> int:
        return min(map(_START, self.spans))

    @cached_property
    def end_ns(self) -> int:
        return max(map(_END, self.spans))

    @property
    def duration_ns(self) -> int:
        """Trace duration = latest span end − earliest span start (as the OTel latency policy)."""
        return self.end_ns - self.start_ns

    @cached_property
    def root(self) -> SpanHeader | None:
        return next((s for s in self.spans if s.get("parent_span_id") is None), None)

    @cached_property
    def trace_state(self) -> str:
        """The root's tracestate, else the first non-empty one (members of a trace share it)."""
        root = self.root
        if root is not None and root.get("trace_state"):
            return root["trace_state"]
        return next((s["trace_state"] for s in self.spans if s.get("trace_state")), "")

    @cached_property
    def randomness(self) -> int:
        """OTEP 235 R: explicit ``ot=rv:`` if the tracestate carries one, else the trace ID's low 56 bits."""
        ts = self.trace_state
        if ts:
            rv = explicit_randomness(ts)
            if rv is not None:
                return rv
        return rnd.randomness(self.trace_id)

    def attributes(self, span: SpanHeader) -> dict[str, Any]:
        """The span's attributes, decoded from ``detail`` on first use and cached. A span whose
        detail cannot be decoded has no attributes (the trace is judged on its headers)."""
        key = id(span)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = span.get("attributes")  # already decoded (tests, or a decoded record)
            if attrs is None:
                detail = span.get("detail")
                attrs = {}
                if detail and self._decode_detail is not None:
                    self.decoded_details += 1
                    try:
                        attrs = self._decode_detail(detail).get("attributes") or {}
                    except Exception:  # noqa: BLE001 - corrupt detail: no attributes, job dead-letters it later
                        attrs = {}
            self._attrs[key] = attrs
        return attrs

    def value(self, span: SpanHeader, key: str) -> Any:
        """A span field by name: header fields (``service.name``, ``name``, ``kind``,
        ``status_code``) without decoding, anything else from the span's attributes (None if absent)."""
        header = HEADER_FIELDS.get(key)
        if header is not None:
            return span.get(header)
        return self.attributes(span).get(key)

    def values(self, key: str) -> Iterator[Any]:
        """The non-missing values of ``key`` over all spans, in span order."""
        for span in self.spans:
            v = self.value(span, key)
            if v is not None:
                yield v
