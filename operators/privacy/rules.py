"""The protector: rules per attribute key, free-text detectors, sanitizers, audit counts.

Per attribute (span, event, link and resource attributes alike) the first rule whose key pattern
matches decides:

- ``keep``      value unchanged (detectors still scan strings unless the rule says ``scan: false``)
- ``tokenize``  value → keyed token (``tok:k1:…``; with ``email_format`` opt-in, e-mail addresses keep a
                well-formed hostname domain)
- ``hash``      value → full-width keyed digest (``hash:k1:<64 hex>``)
- ``redact``    value → ``[REDACTED]``
- ``drop``      attribute removed
- ``url``       URL sanitizer (path ids → {id}, query values per config), then detectors
- ``sql``       statement sanitizer (SQL literals → ?, other stores' arguments → ?), then detectors

No rule matched: in ``denylist`` mode the detectors scan the value; in ``allowlist`` mode (fail
closed) a key that no ``allowed_keys`` pattern matches is dropped (or its value redacted) before
any rule is looked at. Keys are scanned too (a detection in a key is tokenized, see
``protect_key``). Span names are path-sanitized and scanned; status messages, event names, the
service and scope names scanned; trace states keep their ``ot`` sampling fields and tokenize
vendor values (``operators.privacy.tracestate``). Every firing adds to an audit count keyed ``rule:<name>`` or
``detector:<name>``; values never leave this module except transformed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from operators.privacy.detectors import DropValue, Scanner  # noqa: F401 - DropValue re-exported
from operators.privacy.sanitize import sanitize_query, sanitize_span_name, sanitize_statement, sanitize_url
from operators.privacy.tokenizer import Tokenizer
from operators.privacy.tracestate import protect_tracestate

RULE_ACTIONS = ("keep", "tokenize", "hash", "redact", "drop", "url", "sql")
REDACTED = "[REDACTED]"
ALLOWLIST_RULE = "allowlist"
# Attributes tailsift itself writes, after protection. The same keys arriving from a producer are
# dropped before any rule: they would otherwise pose as tailsift's annotations (a forged
# adjusted count, a "late" flag). Other ``sampling.*`` keys (e.g. ``sampling.priority``) are
# protected like any attribute.
RESERVED_KEYS = (
    "tailsift.*",
    "sampling.policy",
    "sampling.reason",
    "sampling.adjusted_count",
    "sampling.late",
    "sampling.dry_run_kept",
)
RESERVED_RULE = "reserved"
_DROP = object()
# producer text of a decoded batch besides its resource and spans (Avro SpanBatch and the OTLP
# fields pipeline.codecs.otlp.kept_batches adds)
BATCH_TEXT = ("service", "scope_name", "otlp.scope_version", "otlp.resource_schema_url", "otlp.scope_schema_url")
SCOPE_ATTRIBUTES = "otlp.scope_attributes"


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    keys: tuple[str, ...] = ()  # glob patterns (fnmatch, case-sensitive)
    key_regex: str | None = None
    scan: bool = True  # run the detectors over what the rule leaves (keep/url/sql)

    def __post_init__(self) -> None:
        if self.action not in RULE_ACTIONS:
            raise ValueError(f"rule {self.name!r}: unknown action {self.action!r}")
        if not self.keys and not self.key_regex:
            raise ValueError(f"rule {self.name!r}: give keys (globs) or key_regex")

    def regex(self) -> str:
        parts = [fnmatch.translate(g) for g in self.keys]
        if self.key_regex:
            parts.append(f"(?:{self.key_regex})\\Z")
        return "|".join(f"(?:{p})" for p in parts)


def _rule(name: str, action: str, *keys: str, scan: bool = True) -> Rule:
    return Rule(name, action, tuple(keys), scan=scan)


_RESERVED = _rule(RESERVED_RULE, "drop", *RESERVED_KEYS)


# Semantic-convention keys with sensible defaults (applied after the config's own rules).
DEFAULT_RULES: tuple[Rule, ...] = (
    _rule(
        "credentials-header",
        "redact",
        "http.request.header.authorization",
        "http.request.header.proxy-authorization",
        "http.request.header.cookie",
        "http.response.header.set-cookie",
        "http.request.header.x-api-key",
        "http.request.header.x-auth-token",
        "http.request.header.x-csrf-token",
        "rpc.grpc.request.metadata.authorization",
    ),
    _rule(
        "secrets",
        "redact",
        "*password*",
        "*passwd*",
        "*secret*",
        "*api_key*",
        "*apikey*",
        "*.token",
        "*_token",
        "*access_token*",
        "*refresh_token*",
        "*.credentials",
    ),
    _rule("card-number", "redact", "payment.card.number", "*.card.number", "card.number", "*.pan", "*card_number*"),
    _rule("national-id", "redact", "*.ssn", "ssn", "*national_id*", "*.tax_id", "*passport*"),
    _rule(
        "user-email",
        "tokenize",
        "user.email",
        "enduser.email",
        "email",
        "*.email",
        "*.email_address",
        "messaging.*.recipient",
    ),
    _rule(
        "user-id",
        "tokenize",
        "user.id",
        "enduser.id",
        "user.name",
        "user.full_name",
        "enduser.pseudo.id",
        "user.hash",
        "customer.id",
        "*.user_id",
        "*.customer_id",
        "usr.id",
        "user_id",
        "session.id",
        "session.previous_id",
        "user.phone",
        "*.phone",
    ),
    _rule(
        "client-ip",
        "tokenize",
        "client.address",
        "client.ip",
        "net.peer.ip",
        "net.sock.peer.addr",
        "network.peer.address",
        "source.address",
        "http.client_ip",
        "net.host.ip",
        "http.request.header.x-forwarded-for",
        "http.request.header.x-real-ip",
        "http.request.header.forwarded",
    ),
    _rule("db-statement", "sql", "db.statement", "db.query.text", "db.query.summary"),
    _rule(
        "url",
        "url",
        "url.full",
        "url.original",
        "http.url",
        "http.target",
        "url.path",
        "http.request.header.referer",
        "url.query",
        "http.request.header.location",
    ),
    # Infrastructure identity (pod names, host names, regions) is kept; the detectors still scan
    # it: a producer controls these values too (an IP in host.ip, a user's address in a pod
    # label). A rule of your own with ``scan: false`` keeps chosen keys raw.
    _rule(
        "infrastructure",
        "keep",
        "k8s.*",
        "host.*",
        "service.*",
        "telemetry.*",
        "cloud.*",
        "deployment.*",
        "container.*",
        "os.*",
        "process.runtime.*",
        "server.address",
        "server.port",
    ),
)


@dataclass
class UrlPolicy:
    query_values: str = "tokenize"  # tokenize | strip | redact | drop
    keep_params: frozenset[str] = field(default_factory=frozenset)


class Protector:
    """Applies rules, sanitizers and detectors to decoded spans, in place."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        scanner: Scanner,
        rules: Iterable[Rule] = (),
        default_rules: bool = True,
        mode: str = "denylist",
        allowed_keys: Iterable[str] = (),
        unknown_keys: str = "drop",
        url: UrlPolicy | None = None,
        sanitize_span_names: bool = True,
        key_memo_size: int = 16_384,
    ):
        if mode not in ("denylist", "allowlist"):
            raise ValueError(f"unknown mode {mode!r}")
        if unknown_keys not in ("drop", "redact"):
            raise ValueError(f"unknown_keys must be drop or redact, not {unknown_keys!r}")
        self.tokenizer = tokenizer
        self.scanner = scanner
        self.rules: list[Rule] = list(rules) + (list(DEFAULT_RULES) if default_rules else [])
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        self._rule_rx = [(re.compile(r.regex()), r) for r in self.rules]
        self.mode = mode
        allowed = list(allowed_keys)
        self._reserved_rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in RESERVED_KEYS))
        # no pattern must allow nothing (an empty regex would match every key)
        self._allowed_rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in allowed)) if allowed else None
        self.unknown_keys = unknown_keys
        self.url = url or UrlPolicy()
        self.sanitize_span_names = sanitize_span_names
        self._key_memo: dict[str, tuple[Rule | None, bool]] = {}
        self._safe_key_memo: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        self._key_memo_size = key_memo_size
        self._value_memo: dict[tuple[str, str, str], tuple[Any, tuple]] = {}
        self._value_memo_size = 65_536

    # ------------------------------------------------------------------ lookups
    def rule_for(self, key: str) -> tuple[Rule | None, bool]:
        """(first matching rule or None, whether the key is allowed)."""
        hit = self._key_memo.get(key)
        if hit is None:
            if self._reserved_rx.match(key):
                hit = (_RESERVED, True)  # dropped whatever the mode and the rules say
            else:
                allowed = self.mode == "denylist" or (
                    self._allowed_rx is not None and self._allowed_rx.match(key) is not None
                )
                rule = next((r for rx, r in self._rule_rx if rx.match(key)), None)
                hit = (rule, allowed)
            if len(self._key_memo) >= self._key_memo_size:
                self._key_memo.clear()
            self._key_memo[key] = hit
        return hit

    def protect_key(self, key: str, counts: dict[str, int]) -> str | None:
        """The key an attribute leaves under: each detection in it tokenized (None: a ``drop``
        detector fired, the attribute goes). Tokenized whatever the detector's action for values:
        a redaction marker would make distinct keys collide (one value silently replacing another)
        and lose which attribute is which, while a keyed token is as unreadable as a marker and
        keeps keys distinct and stable across spans. Rules are looked up by the original key."""
        hit = self._safe_key_memo.get(key)
        if hit is None:
            found = self.scanner.find(key)
            if not found:
                hit = (key, ())
            elif any(action == "drop" for *_, action in found):
                hit = (None, tuple("detector:" + det.name for _, _, det, _ in found))
            else:
                parts, pos = [], 0
                for s, e, _, _ in found:
                    parts += [key[pos:s], self.tokenizer.token(key[s:e])]
                    pos = e
                parts.append(key[pos:])
                hit = ("".join(parts), tuple("detector:" + det.name for _, _, det, _ in found))
            if len(self._safe_key_memo) >= self._key_memo_size:
                self._safe_key_memo.clear()
            self._safe_key_memo[key] = hit
        safe, hits = hit
        for h in hits:
            counts[h] = counts.get(h, 0) + 1
        return safe

    def protect_tracestate(self, tracestate: str, counts: dict[str, int]) -> str:
        """``ot`` sampling fields kept, vendor values tokenized whole (``operators.privacy.tracestate``)."""
        return protect_tracestate(tracestate, self.tokenizer.token, counts)

    # ------------------------------------------------------------------ values
    def scan_text(self, text: str, counts: dict[str, int]) -> str:
        """Detectors over free text (status messages, log lines). A ``drop`` detector → marker."""
        out = self.scanner.scan(text, counts)
        return out if out is not None else REDACTED

    def protect_name(self, name: str, counts: dict[str, int]) -> str:
        if self.sanitize_span_names:
            clean = sanitize_span_name(name)
            if clean != name:
                _count(counts, "rule:span-name")
                name = clean
        return self.scan_text(name, counts)

    def _scan_value(self, value: Any, counts: dict[str, int]) -> Any:
        """Detectors over a typed attribute value; raises DropValue for a ``drop`` detector."""
        if isinstance(value, str):
            out = self.scanner.scan(value, counts)
            if out is None:
                raise DropValue("detector")
            return out
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            if abs(value) >= 10**12:  # a card number stored as a long
                out = self.scanner.scan(str(value), counts)
                if out is None:
                    raise DropValue("detector")
                return value if out == str(value) else out
            return value
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "replace")
            out = self.scanner.scan(text, counts)
            if out is None:
                raise DropValue("detector")
            return value if out == text else out.encode()
        if isinstance(value, list):
            return [self._scan_value(v, counts) for v in value]
        return value

    def _apply(self, rule: Rule, value: Any, attrs: dict, counts: dict[str, int]) -> Any:
        action = rule.action
        if action == "keep":
            return self._scan_value(value, counts) if rule.scan else value
        if isinstance(value, list):
            return [self._apply(rule, v, attrs, counts) for v in value]
        if value is None or isinstance(value, bool):
            return value
        if action == "tokenize":
            if isinstance(value, str):
                if self.scanner.email_format and "@" in value and " " not in value:
                    return self.tokenizer.email_token(value)
                return self.tokenizer.token(value)
            return self.tokenizer.token(bytes(value) if isinstance(value, (bytes, bytearray)) else str(value))
        if action == "hash":
            return self.tokenizer.hash(bytes(value) if isinstance(value, (bytes, bytearray)) else str(value))
        if action == "redact":
            return REDACTED
        text = value if isinstance(value, str) else str(value)
        system = ""
        if action == "sql":
            system = attrs.get("db.system") or attrs.get("db.system.name") or ""
            system = system if isinstance(system, str) else ""
        # URLs and statements repeat (static routes, prepared statements): memoize the whole
        # sanitize+scan step, replaying its audit counts.
        mk = (rule.name, system, text)
        hit = self._value_memo.get(mk)
        if hit is None:
            local: dict[str, int] = {}
            if action == "url":
                u = self.url
                if "/" not in text and "=" in text:  # a bare query string (url.query)
                    out = sanitize_query(text, u.query_values, u.keep_params, self.tokenizer.token)
                else:
                    out = sanitize_url(text, u.query_values, u.keep_params, self.tokenizer.token)
            else:
                out = sanitize_statement(text, system)
            try:
                out = self._scan_value(out, local) if rule.scan else out
            except DropValue:
                out = _DROP  # type: ignore[assignment]  # a sentinel, turned back into DropValue below
            hit = (out, tuple(local.items()))
            if len(self._value_memo) >= self._value_memo_size:
                self._value_memo.clear()
            self._value_memo[mk] = hit
        out, hits = hit
        for k, n in hits:
            counts[k] = counts.get(k, 0) + n
        if out is _DROP:
            raise DropValue("detector")
        return out

    def protect_attributes(self, attrs: dict, counts: dict[str, int], context: dict | None = None) -> dict:
        """A new map with every rule, allowlist and detector applied, keys included. ``context``:
        the map a ``sql`` rule reads ``db.system`` from, when not ``attrs`` itself."""
        if context is None:
            context = attrs
        out = {}
        safe_keys = self._safe_key_memo
        for key, value in attrs.items():
            rule, allowed = self.rule_for(key)
            if not allowed:
                _count(counts, "rule:" + ALLOWLIST_RULE)
                safe = self.protect_key(key, counts) if self.unknown_keys == "redact" else None
                if safe is not None:
                    out[safe] = REDACTED
                continue
            if rule is not None and rule.action == "drop":
                _count(counts, "rule:" + rule.name)
                continue
            try:
                if rule is None:
                    new = self._scan_value(value, counts)
                else:
                    new = self._apply(rule, value, context, counts)
                    if rule.action != "keep" and new != value:
                        _count(counts, "rule:" + rule.name)
            except DropValue:
                continue
            hit = safe_keys.get(key)  # inlined fast path: a known key with nothing in it
            safe = hit[0] if hit is not None and not hit[1] else self.protect_key(key, counts)
            if safe is not None:
                out[safe] = new
        return out

    # ------------------------------------------------------------------ records
    def protect_span(self, span: dict, counts: dict[str, int]) -> None:
        """In place: name, status message, trace state, attributes, events, links."""
        span["name"] = self.protect_name(span.get("name", ""), counts)
        msg = span.get("status_message")
        if msg:
            span["status_message"] = self.scan_text(msg, counts)
        ts = span.get("trace_state")
        if ts:
            span["trace_state"] = self.protect_tracestate(ts, counts)
        attrs = span.get("attributes")
        if attrs:
            span["attributes"] = self.protect_attributes(attrs, counts)
        for ev in span.get("events") or ():
            ev["name"] = self.scan_text(ev.get("name", ""), counts)
            if ev.get("attributes"):
                ev["attributes"] = self.protect_attributes(ev["attributes"], counts)
        for link in span.get("links") or ():
            if link.get("trace_state"):
                link["trace_state"] = self.protect_tracestate(link["trace_state"], counts)
            if link.get("attributes"):
                link["attributes"] = self.protect_attributes(link["attributes"], counts)

    def protect_batch(self, batch: dict, counts: dict[str, int]) -> None:
        """Resource attributes, the service name and the scope (name, version, schema URLs and,
        from OTLP, attributes) of a decoded batch (its spans separately)."""
        res = batch.get("resource")
        if res:
            batch["resource"] = self.protect_attributes(res, counts)
        for field_ in BATCH_TEXT:
            if batch.get(field_):
                batch[field_] = self.scan_text(batch[field_], counts)
        if batch.get(SCOPE_ATTRIBUTES):
            batch[SCOPE_ATTRIBUTES] = self.protect_attributes(batch[SCOPE_ATTRIBUTES], counts)

    # ------------------------------------------------------------------ unchanged?
    # Exact tests, not heuristics: each runs the very protection the records get and says True only
    # when it changed nothing and counted nothing. A kept span whose every part passes is written as
    # its producer encoded it (``pipeline.codecs.otlp_kept``); callers memoize by exact input.
    def reads_context(self, key: str) -> bool:
        """Whether this attribute's protection depends on the rest of its map (a ``sql`` rule's
        key: the statement is sanitized by the map's ``db.system``)."""
        rule, _ = self.rule_for(key)
        return rule is not None and rule.action == "sql"

    def attribute_unchanged(self, key: str, value: Any, context: dict | None = None) -> bool:
        """``protect_attributes`` leaves this attribute exactly as it is (same key, same value of the
        same type, nothing counted) in any map — for a key that ``reads_context``, in any map whose
        ``db.system`` / ``db.system.name`` are those of ``context`` (None: an empty map)."""
        out, counts = self.protect_attribute(key, value, context)
        return self.leaves_attribute(key, value, out, counts)

    def protect_attribute(self, key: str, value: Any, context: dict | None = None) -> tuple[dict, dict[str, int]]:
        """``protect_attributes`` of this one attribute: (its output map — empty when dropped, else
        one entry —, the audit counts). ``context`` as for ``attribute_unchanged``. A map's output is
        its attributes' outputs in order (a later equal key replacing an earlier value in place), its
        counts theirs summed: callers may remember an answer per (key, value, context)."""
        counts: dict[str, int] = {}
        return self.protect_attributes({key: value}, counts, context or {}), counts

    @staticmethod
    def leaves_attribute(key: str, value: Any, out: dict, counts: dict[str, int]) -> bool:
        """The test behind ``attribute_unchanged``, on ``protect_attribute``'s answer: the same key,
        the same value of the same type, nothing counted."""
        return not counts and len(out) == 1 and key in out and _same(out[key], value)

    def name_unchanged(self, name: str) -> bool:
        """``protect_name`` (a span name) changes and counts nothing."""
        counts: dict[str, int] = {}
        return self.protect_name(name, counts) == name and not counts

    def text_unchanged(self, text: str) -> bool:
        """``scan_text`` (status messages, event names) changes and counts nothing."""
        counts: dict[str, int] = {}
        return self.scan_text(text, counts) == text and not counts

    def tracestate_unchanged(self, tracestate: str) -> bool:
        """``protect_tracestate`` changes and counts nothing."""
        counts: dict[str, int] = {}
        return self.protect_tracestate(tracestate, counts) == tracestate and not counts

    def dimension(self, value: str) -> str:
        """A value safe and bounded enough to be an SLI dimension or a metric label (e.g. an
        operation name): path ids → {id}, detections replaced. Not counted in audits."""
        return self.protect_name(value, {})


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types (``1 == 1.0 == True``, but a protector that turned one into
    another would have changed the value)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or a is b  # ``is``: NaN


def _count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n
