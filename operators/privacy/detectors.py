"""PII detectors for free text: precompiled patterns, a cheap pre-check before each, a validator
where a pattern alone over-matches (Luhn for cards, ``ipaddress`` for IPs).

``Scanner.scan`` finds every detector's matches in one text, resolves overlaps by detector
priority (the order of ``DETECTORS``: a JWT inside "Bearer …" is one JWT, not a bearer token plus
an e-mail), and rewrites the text once. Existing tokens (``tok:…``) are left alone, so protecting
protected text changes nothing. Detectors never raise on any input (property-tested).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from operators.privacy.luhn import luhn_valid
from operators.privacy.sanitize import is_id_segment
from operators.privacy.tokenizer import HASH_RE, TOKEN_RE, Tokenizer

ACTIONS = ("tokenize", "redact", "hash", "drop")


def _span0(m: re.Match) -> tuple[int, int]:
    return m.span()


def _span_v(m: re.Match) -> tuple[int, int]:
    return m.span("v")


def _span_v_or_w(m: re.Match) -> tuple[int, int]:
    return m.span("v") if m.group("v") is not None else m.span("w")


def _card_ok(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv4_ok(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _ipv6_ok(s: str) -> bool:
    # "a::b" and "std::x" are valid IPv6 text too: want a digit and 4+ hex digits
    if s.count(":") < 2 or not _has_digit(s) or sum(c.isalnum() for c in s) < 4:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _has_digit(s: str) -> bool:
    return any(c in s for c in "0123456789")


def _user_id_ok(s: str) -> bool:
    # the same test that turns a URL path segment into {id}; bare numbers need 3+ digits
    # ("user 2 of 5" is not an identifier, "user 20417" is)
    return is_id_segment(s) and not (s.isdigit() and len(s) < 3)


# Words after which an identifier names a person or an account. Bare "id" counts too, but not
# after "trace"/"span"/"parent" (W3C ids are not about people) nor inside a longer word
# ("pid", "trace_id", "span-id"); "member" is left out: Kafka group members are not people.
_USER_WORDS = (
    r"(?:user[ _-]?(?:id|name)|users?|userid|username|uid|usr|enduser"
    r"|customers?(?:[ _-]?id)?|accounts?(?:[ _-]?id)?|acct|login"
    r"|(?<!trace )(?<!span )(?<!parent )id)"
)


_HEX = "0-9A-Fa-f"

# Prechecks: each may only say "this detector's pattern cannot match anywhere in the text" (a
# necessary condition of a match, never a guess), property-tested against the pattern alone in
# tests/unit/test_privacy_detectors.py. They matter on kept traces: most new values there are URLs
# and statements whose query values are tokens already (``tok:k1:<32 hex>``), digits everywhere,
# on which card, phone and user_id cost ~25 µs of regex each per text. ``\d`` below is the
# patterns' own (Unicode digits included).
_CARD_RUN = re.compile(r"\d(?:[ -]?\d){12}")  # the first 13 digits of every card match
# ... which, in ASCII text, are 13 characters in a row of 0-9, " " and "-" (all mapped to "0")
_CARD_CHARS = str.maketrans(dict.fromkeys("123456789 -", "0"))
_CARD_RUN_ASCII = "0" * 13
_NANP = re.compile(r"\d{3}[.-]\d{3}[.-]\d{4}")  # the one phone shape without "+" or "("
# where a _USER_WORDS match can start (the alternatives' first letters on), and what may not
# precede it; ASCII text only: the (?i) pattern matches "ı" and "İ" to "i", which lower() does not
_USER_STARTS = ("user", "uid", "usr", "enduser", "customer", "account", "acct", "login", "id")
_ASCII_WORDISH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _card_hint(s: str) -> bool:
    if s.isascii():  # ~2.6 µs per tokenized URL against ~4.3 for the regex
        return _CARD_RUN_ASCII in s.translate(_CARD_CHARS)
    return _CARD_RUN.search(s) is not None


def _phone_hint(s: str) -> bool:
    return "+" in s or "(" in s or _NANP.search(s) is not None


def _user_word_hint(s: str) -> bool:
    """One of the user words at a word start (not after a letter, digit, "_", "." or "-"), as
    the pattern's lookbehind wants it. A digit is not required: an opaque or letters-only UUID
    identifier passes ``_user_id_ok`` without one (the old precheck, any digit, missed
    "user abcdefghij_klmnopqrstuvwxyz")."""
    if not s.isascii():
        return True
    t = s.lower()
    for word in _USER_STARTS:
        i = t.find(word)
        while i >= 0:
            if i == 0 or t[i - 1] not in _ASCII_WORDISH:
                return True
            i = t.find(word, i + 1)
    return False


def _bearer_hint(s: str) -> bool:
    """ "bearer" or "basic" in any case (the old precheck, four spellings, missed "BeArEr …");
    non-ASCII text is left to the pattern, whose (?i) matches "ı" and "ſ" to "i" and "s"."""
    if not s.isascii():
        return True
    t = s.lower()
    return "bearer" in t or "basic" in t


def _api_key_hint(s: str) -> bool:
    """What every api_key match contains, in the case-folded text: the literal shapes (sk_live_…,
    AKIA…, gh?_…, xox…, AIza…) and the words of its (?i:…) group — whose other spellings under the
    pattern's IGNORECASE (Kelvin sign for "k", long s for "s") fold to the same ASCII. A text
    without any is skipped: the full pattern cost ~14 µs per 86-character URL or statement, the most
    of any detector on kept traces (this test ~1 µs)."""
    t = s.casefold()
    return (
        "key" in t
        or "token" in t
        or "secret" in t
        or "passw" in t
        or "pwd" in t
        or "_live_" in t
        or "_test_" in t
        or "akia" in t
        or "gh" in t
        or "xox" in t
        or "aiza" in t
    )


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern
    precheck: Callable[[str], bool]
    validate: Callable[[str], bool] | None = None
    span: Callable[[re.Match], tuple[int, int]] = _span0
    description: str = ""


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
        lambda s: "eyJ" in s,
        description="JSON Web Tokens (header.payload.signature, base64url, 'eyJ' = '{\"')",
    ),
    Detector(
        "bearer",
        re.compile(r"(?i)\b(?:bearer|basic)\s+(?P<v>[A-Za-z0-9._~+/=-]{8,})"),
        _bearer_hint,
        span=_span_v,
        description="credentials after 'Bearer ' / 'Basic ' (the scheme word is kept)",
    ),
    Detector(
        "api_key",
        re.compile(
            r"(?P<w>\b(?:sk|pk|rk|ak)_(?:live|test)_[A-Za-z0-9]{10,}"
            r"|\bAKIA[0-9A-Z]{16}\b"
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
            r"|\bAIza[0-9A-Za-z_-]{35})"
            r"|(?i:\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|client[_-]?secret"
            r"|secret|password|passwd|pwd)[\"']?\s*[=:]\s*[\"']?)(?P<v>[^\s&\"',;}]{3,})"
        ),
        _api_key_hint,
        span=_span_v_or_w,
        description="API-key shapes (sk_live_…, AKIA…, ghp_…, xox…-, AIza…) and values of key=/secret=/password= pairs",
    ),
    Detector(
        "email",
        re.compile(
            # "%40": an address percent-encoded in a URL path or query still names its owner
            r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b"
        ),
        lambda s: "@" in s or "%40" in s,
        description="e-mail addresses (also percent-encoded, %40)",
    ),
    Detector(
        "card",
        re.compile(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d])"),
        _card_hint,
        validate=_card_ok,
        description="payment card numbers: 13-19 digits (spaces/dashes allowed) passing the Luhn check",
    ),
    Detector(
        "ssn",
        re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"),
        lambda s: "-" in s,
        description="US social security numbers (NNN-NN-NNNN, invalid ranges excluded)",
    ),
    Detector(
        "ipv4",
        re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)(?![\w])"),
        lambda s: "." in s,
        validate=_ipv4_ok,
        description="IPv4 addresses (validated by ipaddress)",
    ),
    Detector(
        "ipv6",
        re.compile(
            rf"(?<![\w:.])(?:[{_HEX}]{{0,4}}:){{2,7}}(?:[{_HEX}]{{1,4}}|(?:\d{{1,3}}\.){{3}}\d{{1,3}})?(?![\w:])"
        ),
        lambda s: "::" in s or s.count(":") >= 7,
        validate=_ipv6_ok,
        description="IPv6 addresses (validated by ipaddress)",
    ),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+.-])(?:\+[1-9]\d{7,14}"
            r"|\+\d{1,3}[ .-]\(?\d{1,4}\)?(?:[ .-]\d{2,4}){2,3}"
            r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
            r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
        ),
        _phone_hint,
        description="phone numbers: +E.164, international with separators, NANP (555) 123-4567 / 555-123-4567",
    ),
    Detector(
        "user_id",
        re.compile(
            rf"(?i:(?<![\w.-]){_USER_WORDS})\b[\"']?\s*[:=#/.]?\s*[\"']?(?P<v>[A-Za-z0-9][A-Za-z0-9_-]{{2,63}})\b"
        ),
        _user_word_hint,
        validate=_user_id_ok,
        span=_span_v,
        description="identifiers after user / user_id / uid / customer / account / login / id"
        " (the word is kept; the identifier must look like one: 3+ digits, a UUID, long hex)",
    ),
)

DETECTOR_NAMES: tuple[str, ...] = tuple(d.name for d in DETECTORS)
_BY_NAME = {d.name: d for d in DETECTORS}

# protected spans: tokens and keyed hashes already in the text are never rewritten
_PROTECTED = (TOKEN_RE, HASH_RE)


class DropValue(Exception):
    """A detector whose action is ``drop`` fired: the caller drops the whole value."""

    def __init__(self, detector: str):
        super().__init__(detector)
        self.detector = detector


def redaction(what: str) -> str:
    return f"[REDACTED:{what}]"


class Scanner:
    """Runs the enabled detectors over text and replaces what they find by their action."""

    def __init__(
        self, tokenizer: Tokenizer, actions: dict[str, str], email_format: bool = False, memo_size: int = 65_536
    ):
        unknown = set(actions) - set(_BY_NAME)
        if unknown:
            raise ValueError(f"unknown detectors: {sorted(unknown)}")
        bad = {a for a in actions.values() if a not in ACTIONS}
        if bad:
            raise ValueError(f"unknown detector actions: {sorted(bad)}")
        self.tokenizer = tokenizer
        # priority order = DETECTORS order
        self._dets = [(d, actions[d.name]) for d in DETECTORS if d.name in actions]
        self.email_format = email_format
        self._memo: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        self._memo_size = memo_size

    @property
    def enabled(self) -> list[str]:
        return [d.name for d, _ in self._dets]

    def find(self, text: str) -> list[tuple[int, int, Detector, str]]:
        """Non-overlapping (start, end, detector, action) in text order."""
        taken: list[tuple[int, int]] = []
        if "tok:" in text or "hash:" in text:
            for rx in _PROTECTED:
                taken.extend(m.span() for m in rx.finditer(text))
        found: list[tuple[int, int, Detector, str]] = []
        for det, action in self._dets:
            if not det.precheck(text):
                continue
            for m in det.pattern.finditer(text):
                s, e = det.span(m)
                if s >= e:
                    continue
                if det.validate is not None and not det.validate(text[s:e]):
                    continue
                if any(s < te and ts < e for ts, te in taken):
                    continue
                taken.append((s, e))
                found.append((s, e, det, action))
        found.sort(key=lambda f: f[0])
        return found

    def _replace(self, det: Detector, action: str, value: str) -> str:
        if action == "tokenize":
            if det.name == "email" and self.email_format:
                return self.tokenizer.email_token(value)
            return self.tokenizer.token(value)
        if action == "hash":
            return self.tokenizer.hash(value)
        return redaction(det.name)

    def scan(self, text: str, counts: dict[str, int] | None = None) -> str | None:
        """``text`` with detections replaced; None when a ``drop`` detector fired. Adds
        ``detector:<name>`` counts (never values) to ``counts``."""
        memo = self._memo.get(text)
        if memo is None:
            memo = self._scan(text)
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[text] = memo
        out, hits = memo
        if counts is not None:
            for h in hits:
                counts[h] = counts.get(h, 0) + 1
        return out

    def _scan(self, text: str) -> tuple[str | None, tuple[str, ...]]:
        found = self.find(text)
        if not found:
            return text, ()
        hits = tuple("detector:" + det.name for _, _, det, _ in found)
        if any(action == "drop" for _, _, _, action in found):
            return None, hits
        parts = []
        pos = 0
        for s, e, det, action in found:
            parts.append(text[pos:s])
            parts.append(self._replace(det, action, text[s:e]))
            pos = e
        parts.append(text[pos:])
        return "".join(parts), hits
