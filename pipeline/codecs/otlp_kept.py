"""Kept traces from OTLP input written as ``otlp_proto``: each span's own bytes, rebuilt only
where protection (or the output's value mapping) would change it.

The reference path (``otlp.kept_batches`` → ``Protector.protect_span`` → ``otlp.encode_request``)
turns every kept span into dicts and builds a new protobuf ``Span`` field by field: a third of the
job core's CPU on the peer benchmark, for ~12 % of its spans. Here a span is written as the
producer encoded it (its unknown fields discarded, ``trace_state`` given the decision's threshold,
the ``sampling.*`` attributes appended as encoded ``KeyValue`` fields, see ``protowire``) when the
reference path would have written the same span; otherwise it takes the reference path alone.

"The same span" is decided exactly, never guessed: every text the span carries (name, status
message, trace state, each attribute key and value of the span, its events and links, event names,
link trace states) is put through the protector's own rules (``Protector.*_unchanged``), which say
yes only when protection changes and counts nothing. Those answers are memoized by exact input —
an attribute by its encoded ``KeyValue`` bytes (key, value type and value), a text by itself — so a
value seen before costs a dict lookup, and a value never seen is checked in full. Spans the dict
shape cannot carry unchanged go the reference way too: a ``kvlist`` or nested array (the output
has them as JSON strings), a repeated key, an empty value, a kind or status code outside the
enum, any ``dropped_*_count`` or link flags (not carried), a producer's own ``sampling.*`` /
``tailsift.*`` key. Resource and scope go the reference way once per distinct (resource, scope)
bytes and are memoized with their audit counts, like the protector's URL memo.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from operators.tracestate import with_threshold
from pipeline.codecs.interface import Malformed
from pipeline.codecs.otlp import (
    InvalidSpan,
    OtlpTrace,
    check_writable,
    envelope_batch,
    fill_attrs,
    fill_envelope,
    fill_span,
    span_to_dict,
    value_to_py,
)
from pipeline.codecs.protowire import WIRE, WireSpan, wire_span

# memo entries are bounded in count and in size: a longer input is checked each time it comes
_MEMO_MAX_BYTES = 512  # × memo_size entries × 5 memos: ≤ ~40 MiB at worst, typically far less
_ENVELOPE_MEMO_BYTES, _ENVELOPE_MEMO_SIZE = 8192, 1024  # ≤ ~16 MiB of resources, scopes and their output
_SAME = object()  # KeptWriter.batches: the protector in use
_IN_CONTEXT = "in context"  # a memo answer: ask again with the map's db.system
_SYSTEM_KEYS = ("db.system", "db.system.name")  # what Protector's sql rule reads of the map
_SCALARS = frozenset(("string_value", "bool_value", "int_value", "double_value", "bytes_value"))
_NESTED = frozenset(("array_value", "kvlist_value"))
# keys tailsift writes itself: a producer's copy is replaced (privacy off) or dropped (on)
_OWN_KEYS_PREFIX = "tailsift."
_OWN_KEYS = frozenset(
    ("sampling.policy", "sampling.reason", "sampling.adjusted_count", "sampling.late", "sampling.dry_run_kept")
)


class KeptWriter:
    """Wire batches (``protowire``) of kept OTLP traces, for ``encode_request`` in ``otlp_proto``.
    One per job: its memos (cleared when full, entries of at most ``_MEMO_MAX_BYTES``) hold answers
    about inputs, and the protected resources and scopes; they belong to one protector."""

    def __init__(self, protector: Any = None, memo_size: int = 16_384):
        self.memo_size = memo_size
        self.use(protector)

    def use(self, protector: Any) -> None:
        """Protect with ``protector`` (None: privacy off); the memos start over: answers are its."""
        self.protector = protector
        self._attribute: dict[Any, Any] = {}  # encoded KeyValue (, its db.system) → True, False, _IN_CONTEXT
        self._map: dict[tuple[bytes, ...], bool] = {}  # a whole map's encoded KeyValues → unchanged
        self._name: dict[str, bool] = {}
        self._text: dict[str, bool] = {}
        self._tracestate: dict[str, bool] = {}
        self._envelope: dict[tuple, tuple[bytes, bytes, tuple]] = {}

    def batches(
        self,
        trace: OtlpTrace,
        sampling_attrs: dict,
        threshold: int | None,
        pii_counts: dict[str, int],
        protector: Any = _SAME,
    ) -> list[dict]:
        """One wire batch per (resource, scope) group of ``trace``, protected (by ``protector``
        when given) and annotated as the reference path would. Raises ``Malformed`` (nothing
        counted) for a span no output can carry."""
        if protector is not _SAME and protector is not self.protector:
            self.use(protector)
        try:
            for sp in (h["detail"] for h in trace.spans):
                check_writable(sp)
        except InvalidSpan as exc:
            raise Malformed(exc.reason, str(exc)) from None
        suffix = _annotation(sampling_attrs)
        trace_id = trace.trace_id
        out = []
        for rs, ss, service, headers in trace.groups:
            spans = [self._span(trace_id, h, sampling_attrs, suffix, threshold, pii_counts) for h in headers]
            rs_head, ss_head = self._envelope_of(trace_id, rs, ss, service, pii_counts)
            out.append({"trace_id": trace_id, "spans": spans, WIRE: (rs_head, ss_head)})
        return out

    # ------------------------------------------------------------------ spans
    def _span(
        self, trace_id: bytes, header: dict, sampling_attrs: dict, suffix: bytes, th: int | None, counts: dict
    ) -> WireSpan:
        sp: Span = header["detail"]  # the handle's own: the kept path may consume it
        sp.DiscardUnknownFields()  # the reference path writes known fields only
        if self._unchanged(sp):
            if not sp.HasField("status"):
                sp.status.SetInParent()  # the reference path always writes a status
            if th is not None:  # OTEP 235, as the reference path: the last trace_state field wins
                sp.trace_state = with_threshold(sp.trace_state, th)
            links = tuple(ln.trace_id for ln in sp.links) if sp.links else ()
            return wire_span(sp.SerializeToString() + suffix, links)
        return self._rebuilt(trace_id, header, sampling_attrs, th, counts)

    def _rebuilt(self, trace_id: bytes, header: dict, sampling_attrs: dict, th: int | None, counts: dict) -> WireSpan:
        """The reference path for one span: decoded to a dict, protected, annotated, encoded."""
        sp = header["detail"]
        span = span_to_dict(header, sp)
        if self.protector is not None:
            self.protector.protect_span(span, counts)
        span["attributes"].update(sampling_attrs)
        if th is not None:
            span["trace_state"] = with_threshold(span["trace_state"], th)
        msg = Span()
        fill_span(msg, trace_id, span)
        return wire_span(msg.SerializeToString(), tuple(ln["trace_id"] for ln in span["links"]))

    def _unchanged(self, sp: Span) -> bool:
        """The reference path would write this span as it is (before its annotations)."""
        if sp.dropped_attributes_count or sp.dropped_events_count or sp.dropped_links_count:
            return False
        status = sp.status
        if not (0 <= sp.kind < 6 and 0 <= status.code < 3):
            return False
        protector = self.protector
        if protector is not None:
            if not self._known(self._name, sp.name, protector.name_unchanged):
                return False
            message = status.message
            if message and not self._known(self._text, message, protector.text_unchanged):
                return False
            ts = sp.trace_state
            if ts and not self._known(self._tracestate, ts, protector.tracestate_unchanged):
                return False
        if not self._attributes_unchanged(sp.attributes):
            return False
        if sp.events:
            for ev in sp.events:
                if ev.dropped_attributes_count or not self._attributes_unchanged(ev.attributes):
                    return False
                if protector is not None and not self._known(self._text, ev.name, protector.text_unchanged):
                    return False
        if sp.links:
            for ln in sp.links:
                if ln.flags or ln.dropped_attributes_count or not self._attributes_unchanged(ln.attributes):
                    return False
                ts = ln.trace_state
                if (
                    protector is not None
                    and ts
                    and not self._known(self._tracestate, ts, protector.tracestate_unchanged)
                ):
                    return False
        return True

    def _attributes_unchanged(self, kvs: Any) -> bool:
        """A whole attribute map is left as it is: one lookup for a map seen before (spans of one
        operation repeat theirs), else each attribute on its own."""
        if not kvs:
            return True
        encoded = tuple([kv.SerializeToString() for kv in kvs])  # a tuple: unambiguous where b"".join is not
        ok = self._map.get(encoded)
        if ok is None:
            ok = self._map_unchanged(kvs, encoded)
            if sum(map(len, encoded)) <= _MEMO_MAX_BYTES:
                if len(self._map) >= self.memo_size:
                    self._map.clear()
                self._map[encoded] = ok
        return ok

    def _map_unchanged(self, kvs: Any, encoded: tuple[bytes, ...]) -> bool:
        memo = self._attribute
        keys = set()
        statements = systems = None  # SQL statements: their answer holds for their map's db.system only
        for kv, data in zip(kvs, encoded):
            ok = memo.get(data)
            if ok is None:
                ok = self._remember(data, self._attribute_unchanged(kv, None))
            if ok is not True:
                if ok is not _IN_CONTEXT:
                    return False
                statements = [*(statements or ()), (kv, data)]
            key = kv.key
            keys.add(key)
            if key in _SYSTEM_KEYS:
                systems = [*(systems or ()), (kv, data)]
        if len(keys) != len(kvs):
            return False  # a repeated key: the reference path keeps one
        if statements:
            found = systems or ()
            system = tuple(data for _, data in found)
            context = {kv.key: value_to_py(kv.value) for kv, _ in found}
            for kv, data in statements:
                ok = memo.get((data, system))
                if ok is None:
                    ok = self._remember((data, system), self._attribute_unchanged(kv, context))
                if not ok:
                    return False
        return True

    def _remember(self, key: Any, answer: Any) -> Any:
        data = key if isinstance(key, bytes) else key[0]
        if len(data) <= _MEMO_MAX_BYTES:
            memo = self._attribute
            if len(memo) >= self.memo_size:
                memo.clear()
            memo[key] = answer
        return answer

    def _attribute_unchanged(self, kv: Any, context: dict | None) -> Any:
        """True / False, or ``_IN_CONTEXT`` (asked without ``context`` about a key whose protection
        reads the map's ``db.system``)."""
        value = kv.value
        which = value.WhichOneof("value")
        if which not in _SCALARS:
            if which != "array_value" or any(x.WhichOneof("value") in _NESTED for x in value.array_value.values):
                return False  # written as a JSON string by the reference path (or, no value, without one)
        key = kv.key
        if key in _OWN_KEYS or key.startswith(_OWN_KEYS_PREFIX):
            return False
        protector = self.protector
        if protector is None:
            return True
        if context is None and protector.reads_context(key):
            return _IN_CONTEXT
        return protector.attribute_unchanged(key, value_to_py(value), context)

    def _known(self, memo: dict[str, bool], text: str, check: Any) -> bool:
        ok = memo.get(text)
        if ok is None:
            ok = check(text)
            if len(text) <= _MEMO_MAX_BYTES:
                if len(memo) >= self.memo_size:
                    memo.clear()
                memo[text] = ok
        return ok

    # ------------------------------------------------------------------ resource and scope
    def _envelope_of(
        self, trace_id: bytes, rs: ResourceSpans, ss: ScopeSpans, service: str, counts: dict
    ) -> tuple[bytes, bytes]:
        """(ResourceSpans without scope_spans, ScopeSpans without spans), protected the reference
        way (``protect_batch``, ``fill_envelope``); memoized by their input bytes with the counts."""
        key = (rs.resource.SerializeToString(), rs.schema_url, ss.scope.SerializeToString(), ss.schema_url)
        hit = self._envelope.get(key)
        if hit is None:
            hit = self._protected_envelope(trace_id, rs, ss, service)
            if len(key[0]) + len(key[2]) <= _ENVELOPE_MEMO_BYTES:  # resources repeat; a huge one is rare
                if len(self._envelope) >= _ENVELOPE_MEMO_SIZE:
                    self._envelope.clear()
                self._envelope[key] = hit
        rs_head, ss_head, hits = hit
        for name, n in hits:
            counts[name] = counts.get(name, 0) + n
        return rs_head, ss_head

    def _protected_envelope(
        self, trace_id: bytes, rs: ResourceSpans, ss: ScopeSpans, service: str
    ) -> tuple[bytes, bytes, tuple]:
        """(ResourceSpans head, ScopeSpans head, audit counts) as the reference path writes them."""
        batch = envelope_batch(trace_id, rs, ss, service)
        local: dict[str, int] = {}
        if self.protector is not None:
            self.protector.protect_batch(batch, local)
        rs_out, ss_out = ResourceSpans(), ScopeSpans()
        fill_envelope(rs_out, ss_out, batch)
        return rs_out.SerializeToString(), ss_out.SerializeToString(), tuple(local.items())


def _annotation(sampling_attrs: dict) -> bytes:
    """The ``sampling.*`` attributes as encoded ``Span.attributes`` fields, encoded as the
    reference path encodes them (a span holding only them is only those fields)."""
    scratch = Span()
    fill_attrs(scratch.attributes, sampling_attrs)
    return scratch.SerializeToString()
