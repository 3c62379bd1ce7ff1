"""Deterministic keyed tokens: HMAC-SHA256 of the value under a key from a key ring.

``tok:<key id>:<digest>`` — the digest is the first ``digest_bytes`` of HMAC-SHA256(key, value)
in lower-case hex (16 bytes → 32 characters; hex survives case-folding search indexes). The same key and value give the
same token in every process, so "all traces of this user" still works on tokens; without the key
nobody can compute a token from a guessed value (a plain hash of an e-mail address can be
reversed by trying addresses). Rotation: the ring holds several keys, one active; new tokens use
the active key and name it, so tokens made under an older key stay recognisable by their id.

Keys are injected (bytes); this module never reads the environment or files.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

KEY_ID_PATTERN = r"[A-Za-z0-9_-]{1,16}"
MIN_KEY_BYTES = 16
TOKEN_RE = re.compile(r"tok:(" + KEY_ID_PATTERN + r"):([0-9a-f]{10,64})")
HASH_RE = re.compile(r"hash:(" + KEY_ID_PATTERN + r"):([0-9a-f]{64})")
_KEY_ID_RE = re.compile(KEY_ID_PATTERN)
# A DNS hostname of two or more labels ending in an alphabetic TLD: the only domain an opt-in
# format-preserving e-mail token may keep (anything else after the "@" could carry other data).
_HOSTNAME_RE = re.compile(r"(?=.{4,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\Z")


class KeyRingError(ValueError):
    """A key ring that cannot be used (no keys, a short key, an unknown active id)."""


class KeyRing:
    """Token keys by id, one of them active. Holds secrets: it has no useful repr."""

    __slots__ = ("_keys", "active")

    def __init__(self, keys: Mapping[str, bytes], active: str | None = None):
        if not keys:
            raise KeyRingError("the key ring is empty")
        for kid, key in keys.items():
            if not _KEY_ID_RE.fullmatch(kid):
                raise KeyRingError(f"key id {kid!r} must match {KEY_ID_PATTERN}")
            if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
                raise KeyRingError(f"key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")
        if active is None:
            if len(keys) != 1:
                raise KeyRingError(f"several keys ({', '.join(sorted(keys))}): say which one is active")
            active = next(iter(keys))
        if active not in keys:
            raise KeyRingError(f"the active key id {active!r} is not in the ring ({', '.join(sorted(keys))})")
        self._keys = {kid: bytes(k) for kid, k in keys.items()}
        self.active = active

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def key(self, kid: str) -> bytes:
        return self._keys[kid]

    def with_active(self, kid: str) -> KeyRing:
        return KeyRing(self._keys, kid)

    def __repr__(self) -> str:  # never print key material
        return f"KeyRing(ids={self.ids}, active={self.active!r})"


class Tokenizer:
    """Tokens under the ring's active key. A bounded memo makes repeated values (a user id on
    every span of a trace) cost one dict lookup."""

    def __init__(self, ring: KeyRing, digest_bytes: int = 16, memo_size: int = 65_536):
        if not 5 <= digest_bytes <= 32:
            raise ValueError("digest_bytes must be within 5..32")
        self.ring = ring
        self.key_id = ring.active
        self.digest_bytes = digest_bytes
        self._mac = hmac.new(ring.key(ring.active), digestmod=hashlib.sha256)  # copied per value
        self._prefix = f"tok:{self.key_id}:"
        self._hash_prefix = f"hash:{self.key_id}:"
        self._memo: dict[bytes, str] = {}
        self._memo_size = memo_size

    def digest(self, value: str | bytes) -> bytes:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        mac = self._mac.copy()
        mac.update(data)
        return mac.digest()

    def token(self, value: str | bytes) -> str:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        memo = self._memo
        tok = memo.get(data)
        if tok is None:
            mac = self._mac.copy()
            mac.update(data)
            tok = self._prefix + mac.digest()[: self.digest_bytes].hex()
            if len(memo) >= self._memo_size:
                memo.clear()
            memo[data] = tok
        return tok

    def email_token(self, value: str) -> str:
        """Format-preserving (opt-in, ``privacy.token.email_format``):
        ``tok:k1:<digest of the whole address>@<domain>`` (the digest is the same as
        ``token(value)``'s, so the two forms of one address correlate). Only a well-formed
        hostname is kept as the domain; otherwise the whole value is tokenized."""
        local, at, domain = value.rpartition("@")
        if not at or not local or not _HOSTNAME_RE.match(domain):
            return self.token(value)
        return self.token(value) + "@" + domain

    def hash(self, value: str | bytes) -> str:
        """Full-width keyed digest, ``hash:<key id>:<64 hex>`` (for values that must not collide)."""
        return self._hash_prefix + self.digest(value).hex()

    @staticmethod
    def key_id_of(token: str) -> str | None:
        """The key id a token (or keyed hash) was made with, or None if it is not one."""
        m = TOKEN_RE.fullmatch(token) or HASH_RE.fullmatch(token)
        if m is None and "@" in token:
            m = TOKEN_RE.fullmatch(token.rpartition("@")[0])
        return m.group(1) if m else None
