"""PII protection wiring: token keys from the environment or a key file, the protector built from
``config.privacy``, audit records, a log-record hook that protects every log line, and a
micro-benchmark (``bench_protect``).

Keys: ``id:secret`` pairs, comma- or newline-separated; a secret is hex (even length) or base64
and at least 16 bytes. From the variable ``privacy.keys.env`` (default ``TAILSIFT_TOKEN_KEYS``) or
the file ``privacy.keys.file`` (``#`` comments allowed). They never appear in YAML, logs, metrics
or error messages (errors name the variable or file, never its content).
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import os
import re
import stat
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path

from operators.privacy import KeyRing, KeyRingError, Protector, Rule, Scanner, Tokenizer, UrlPolicy
from pipeline.codecs import avro
from pipeline.config_privacy import PrivacyConfig

PII_AUDIT = "pii_audit.v1"
log = logging.getLogger("tailsift.privacy")


class PrivacyKeyError(Exception):
    """Token keys missing or unusable; the message names the variable/file, never a secret."""


def parse_keys(text: str, source: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not kid or not secret:
            raise PrivacyKeyError(f"{source}: entry {n} is not 'id:secret'")
        if kid in keys:
            raise PrivacyKeyError(f"{source}: key id {kid!r} appears twice")
        keys[kid] = _decode_secret(secret, f"{source}: key {kid!r}")
    if not keys:
        raise PrivacyKeyError(f"{source}: holds no keys")
    return keys


def _decode_secret(secret: str, what: str) -> bytes:
    if len(secret) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in secret):
        return bytes.fromhex(secret)
    try:
        return base64.b64decode(
            secret + "=" * (-len(secret) % 4),
            altchars=b"-_" if ("-" in secret or "_" in secret) else None,
            validate=True,
        )
    except (binascii.Error, ValueError):
        raise PrivacyKeyError(f"{what}: the secret is neither hex nor base64") from None


def load_key_ring(privacy: PrivacyConfig, environ: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring the config points at; raises PrivacyKeyError with the fix."""
    environ = os.environ if environ is None else environ
    k = privacy.keys
    if k.file:
        path = Path(k.file)
        source = f"key file {path} (privacy.keys.file)"
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except OSError as exc:
            raise PrivacyKeyError(
                f"cannot read the token key file {path} (privacy.keys.file): {exc.strerror or exc}"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token key file %s is readable by group/others (chmod 600 it)", path)
    else:
        source = f"environment variable {k.env} (privacy.keys.env)"
        text = environ.get(k.env, "")
        if not text.strip():
            raise PrivacyKeyError(
                f"privacy is enabled but the token keys are missing: set the environment variable {k.env} "
                f'to "id:secret" pairs (e.g. {k.env}=k1:$(openssl rand -hex 32)) '
                "or name a key file in privacy.keys.file"
            )
    keys = parse_keys(text, source)
    try:
        return KeyRing(keys, k.active)
    except KeyRingError as exc:
        hint = " (privacy.keys.active)" if "active" in str(exc) else ""
        raise PrivacyKeyError(f"{source}: {exc}{hint}") from None


def build_protector(
    privacy: PrivacyConfig, environ: Mapping[str, str] | None = None, ring: KeyRing | None = None
) -> Protector:
    ring = ring or load_key_ring(privacy, environ)
    tokenizer = Tokenizer(ring, digest_bytes=privacy.token.digest_bytes)
    scanner = Scanner(tokenizer, privacy.detectors.actions(), email_format=privacy.token.email_format)
    rules = [Rule(r.name, r.action, tuple(r.keys), r.key_regex, r.scan) for r in privacy.rules]
    return Protector(
        tokenizer,
        scanner,
        rules,
        default_rules=privacy.default_rules,
        mode=privacy.mode,
        allowed_keys=privacy.allowed_keys,
        unknown_keys=privacy.unknown_keys,
        url=UrlPolicy(privacy.url.query_values, frozenset(privacy.url.keep_params)),
        sanitize_span_names=privacy.sanitize_span_names,
    )


def audit_record(
    trace_id: bytes, counts: Mapping[str, int], key_id: str, now_ns: int, late: bool = False, span_count: int = 0
) -> bytes:
    return avro.encode(
        PII_AUDIT,
        {
            "trace_id": trace_id,
            "late": late,
            "span_count": span_count,
            "counts": dict(counts),
            "key_id": key_id,
            "emitted_at_unix_nano": now_ns,
        },
    )


# ---------------------------------------------------------------------------- logs

_originals: dict = {}


def infrastructure_addresses(bootstrap_servers: str, *hosts: str) -> tuple[str, ...]:
    """The operator's own endpoints named in the config (each ``host:port`` of the bootstrap list,
    and each host alone): not personal data, and what an SRE needs to read in "cannot reach Kafka
    at …" — so log protection leaves them as they are (an IP detector would tokenize them)."""
    out: set[str] = set()
    for entry in [*bootstrap_servers.split(","), *hosts]:
        entry = entry.strip()
        if not entry:
            continue
        out.add(entry)
        if entry.startswith("[") and "]" in entry:  # [ipv6]:port
            out.add(entry[1 : entry.index("]")])
        elif entry.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
            out.add(entry.split(":", 1)[0])
    return tuple(sorted((a for a in out if a), key=len, reverse=True))


def _known_splitter(known: Iterable[str]):
    """A function protecting a text except the literal ``known`` strings: the text is cut at each
    occurrence and only the pieces between them go through the detectors. Cutting rather than
    substituting placeholders, so no placeholder can collide with (or be rewritten by) a detector."""
    parts = sorted({k for k in known if k}, key=len, reverse=True)
    if not parts:
        return None
    pattern = re.compile("(" + "|".join(re.escape(k) for k in parts) + ")")

    def protect(protector: Protector, text: str) -> str:
        pieces = pattern.split(text)
        if len(pieces) == 1:
            return protector.scan_text(text, {})
        # split with one group: odd indexes are the known strings themselves
        return "".join(piece if i % 2 else protector.scan_text(piece, {}) for i, piece in enumerate(pieces))

    return protect


def install_log_protection(protector: Protector, known: Iterable[str] = ()) -> None:
    """Every log record created from now on (any logger, any handler, Faust's too) has its message
    — arguments merged — and its exception text run through the detectors. A record factory and
    not a handler filter, because Faust replaces handlers when the worker starts. Uncaught
    exceptions (printed by ``sys.excepthook``, not logging) are protected the same way.

    ``known``: literal strings left as they are (the broker and metrics addresses from the config,
    see ``infrastructure_addresses``); everything around them is still scanned."""
    if not _originals:
        _originals["factory"] = logging.getLogRecordFactory()
        _originals["hook"] = sys.excepthook
    make_record = _originals["factory"]
    splitter = _known_splitter(known)

    def scan(text: str) -> str:
        return splitter(protector, text) if splitter else protector.scan_text(text, {})

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
            clean = scan(message)
            if clean != message or record.args:
                record.msg, record.args = clean, ()
            if record.exc_info and record.exc_info[0] is not None:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text = scan(text)
                record.exc_info = None  # the protected text is what handlers print
        except Exception:  # noqa: BLE001 - never lose a log line to the protector
            record.msg, record.args = "(log message withheld: PII protection failed on it)", ()
        return record

    def excepthook(etype, value, tb) -> None:
        text = "".join(traceback.format_exception(etype, value, tb))
        sys.stderr.write(scan(text))

    logging.setLogRecordFactory(factory)
    sys.excepthook = excepthook


def uninstall_log_protection() -> None:
    if _originals:
        logging.setLogRecordFactory(_originals.pop("factory"))
        sys.excepthook = _originals.pop("hook")


# ---------------------------------------------------------------------------- benchmark


def bench_protect(traces: int = 300, seed: int = 7, rounds: int = 3, out=print) -> dict[str, float]:
    """Measure the cost of protection on generated traces (one core, no Kafka): tokens/s (fresh
    values, no memo), and µs per kept span for the full protector — cold (every value new to the
    memos) and warm (a second pass: values seen before, as a long-running worker sees routes and
    statements). Returns the figures; ``out`` prints a summary (None: silent)."""
    from pipeline.generator import GeneratorConfig, TraceGenerator

    ring = KeyRing({"bench": os.urandom(32)})
    n_tok = 200_000
    values = [f"user-{i}@example.com" for i in range(n_tok)]
    tok = Tokenizer(ring, memo_size=1)  # memo defeated: every value hashed
    started = time.perf_counter()
    for v in values:
        tok.token(v)
    tokens_per_s = n_tok / (time.perf_counter() - started)

    gen = TraceGenerator(GeneratorConfig(seed=seed, error_rate=0.2, canaries=None))
    spans: list[dict] = []
    for i in range(traces):
        for batch in gen.trace(1_700_000_000_000_000_000 + i * 10_000_000).batches:
            for s in batch["spans"]:
                d = avro.decode_detail(s["detail"])
                s = {k: v for k, v in s.items() if k != "detail"}
                s.update(d)
                spans.append(s)
    best_cold = best_warm = float("inf")
    counts: dict[str, int] = {}
    for _ in range(rounds):
        protector = build_protector(PrivacyConfig(enabled=True), ring=ring)
        work = copy.deepcopy(spans)
        started = time.perf_counter()
        for s in work:
            protector.protect_span(s, counts)
        best_cold = min(best_cold, time.perf_counter() - started)
        work = copy.deepcopy(spans)
        started = time.perf_counter()
        for s in work:
            protector.protect_span(s, counts)
        best_warm = min(best_warm, time.perf_counter() - started)
    attrs = sum(len(s["attributes"]) for s in spans) / len(spans)
    figures = {
        "tokens_per_s": tokens_per_s,
        "us_per_span_cold": best_cold / len(spans) * 1e6,
        "us_per_span_warm": best_warm / len(spans) * 1e6,
        "spans": float(len(spans)),
        "attributes_per_span": attrs,
    }
    if out is not None:
        out(
            f"privacy: {tokens_per_s:,.0f} tokens/s (HMAC-SHA256, no memo); "
            f"{figures['us_per_span_cold']:.1f} µs per kept span cold, {figures['us_per_span_warm']:.1f} µs warm "
            f"({len(spans):,} generated spans, {attrs:.1f} attributes each; best of {rounds})"
        )
    return figures
