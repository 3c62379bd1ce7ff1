"""Structure-aware sanitizers: URLs (ids in paths → ``{id}``, query values tokenized or stripped,
user-info and fragments removed), database statements (SQL literals → ``?``; other stores'
commands keep their verb) and span names ("GET /users/123" → "GET /users/{id}").

They bound cardinality as much as they protect: a sanitized span name or route is a fine SLI
dimension. Free-text detectors run after them (see ``operators.privacy.rules``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote_plus

ID = "{id}"

_UUID = re.compile(r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}")
_LONG_HEX = re.compile(r"(?=[^/]*\d)[0-9A-Fa-f]{12,}")
_OPAQUE = re.compile(r"[A-Za-z0-9_=~.-]{24,}")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_TEMPLATED = re.compile(r"\{[^/{}]*\}|:[A-Za-z_]\w*|<[^/<>]*>")


def is_id_segment(seg: str) -> bool:
    """A path segment that names one thing (and so may name a person): digits, a UUID, long hex,
    an opaque token, or any segment holding 3+ digits ("u-58590", "ord-1976851", "SKU-26277").
    Version-ish segments ("v2", "oauth2", "s3") stay."""
    if not seg or _TEMPLATED.fullmatch(seg):
        return False
    if seg.isdigit():
        return True
    if len(seg) - len(seg.translate(_NO_DIGITS)) >= 3:
        return True
    return bool(_UUID.fullmatch(seg) or _LONG_HEX.fullmatch(seg) or (_OPAQUE.fullmatch(seg) and not seg.isalpha()))


def sanitize_path(path: str) -> str:
    if "/" not in path:
        return ID if is_id_segment(path) else path
    segs = path.split("/")
    changed = False
    for i, seg in enumerate(segs):
        if seg and is_id_segment(seg):
            segs[i] = ID
            changed = True
        elif ";" in seg:  # matrix params: /a;jsessionid=...
            segs[i] = seg.split(";", 1)[0]
            changed = True
    return "/".join(segs) if changed else path


def sanitize_query(query: str, mode: str, keep_params: frozenset[str], token: Callable[[str], str]) -> str:
    """``mode``: tokenize (each value → its token), strip (values removed, names kept), redact
    (each value → ``[REDACTED]``), drop (the whole query removed). Params in ``keep_params`` keep
    their values (free-text detectors still run on them)."""
    if not query or mode == "drop":
        return ""
    out = []
    for pair in query.split("&"):
        if not pair:
            continue
        name, eq, value = pair.partition("=")
        if not eq or name in keep_params or not value:
            out.append(pair if eq or not value else pair)
            continue
        if mode == "tokenize":
            out.append(f"{name}={token(unquote_plus(value))}")
        elif mode == "strip":
            out.append(f"{name}=")
        else:
            out.append(f"{name}=[REDACTED]")
    return "&".join(out)


def sanitize_url(url: str, query_mode: str, keep_params: frozenset[str], token: Callable[[str], str]) -> str:
    """scheme://[userinfo@]host[:port]/path?query#fragment → user-info and fragment removed, path
    ids → {id}, query per ``sanitize_query``. Relative URLs and bare paths work too."""
    url, _, _fragment = url.partition("#")  # fragments carry OAuth tokens (implicit flow): dropped
    url, q, query = url.partition("?")
    prefix = ""
    path = url
    scheme_end = url.find("://")
    if scheme_end >= 0:
        auth_start = scheme_end + 3
        path_start = url.find("/", auth_start)
        if path_start < 0:
            path_start = len(url)
        authority = url[auth_start:path_start]
        if "@" in authority:
            authority = authority.rpartition("@")[2]
        prefix = url[:auth_start] + authority
        path = url[path_start:]
    out = prefix + sanitize_path(path)
    if q:
        query = sanitize_query(query, query_mode, keep_params, token)
        if query:
            out += "?" + query
    return out


# ---------------------------------------------------------------------------- statements

_SQL_VERBS = frozenset(
    (
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "REPLACE",
        "UPSERT",
        "MERGE",
        "WITH",
        "CALL",
        "EXEC",
        "EXECUTE",
        "VALUES",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "SHOW",
        "EXPLAIN",
        "SET",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "GRANT",
        "REVOKE",
        "COPY",
        "DECLARE",
        "FETCH",
        "LOCK",
        "(SELECT",
    )
)
_SQL_LITERAL = re.compile(
    r"'(?:[^'\\]|\\.|'')*'"  # 'string' (with '' or \' escapes)
    r"|'(?:[^'\\]|\\.|'')*$"  # an unterminated string: everything after the quote
    r"|\$([A-Za-z_]*)\$.*?\$\1\$"  # $$dollar quoted$$ / $tag$...$tag$
    r"|\b[xX]'[0-9A-Fa-f]*'"  # X'hex'
    r"|\b0[xX][0-9A-Fa-f]+\b"  # 0xhex
    r"|(?<![\w$.:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])",  # numbers, not inside identifiers
    re.S,
)
_MYSQL_DQ = re.compile(r'"(?:[^"\\]|\\.|"")*"')
_JSON_SCALAR = re.compile(r'(:\s*)(?:"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)')


def sanitize_sql(sql: str, double_quoted_are_strings: bool = False) -> str:
    """Literals → ``?``. Double-quoted text is an identifier in standard SQL (kept) and a string in
    MySQL's default mode (``double_quoted_are_strings``)."""
    out = _SQL_LITERAL.sub("?", sql)
    if double_quoted_are_strings:
        out = _MYSQL_DQ.sub("?", out)
    return out


def sanitize_statement(stmt: str, db_system: str = "") -> str:
    """A ``db.statement`` / ``db.query.text`` of any store: SQL → literals replaced; a JSON query
    (MongoDB, Elasticsearch) → scalar values replaced; any other command (Redis, Memcached …) →
    its verb and ``?`` for the arguments, as OpenTelemetry's own obfuscation does."""
    s = stmt.lstrip()
    if not s:
        return stmt
    if s[0] in "{[":
        return _JSON_SCALAR.sub(r"\1?", s)
    verb = s.split(None, 1)[0].upper()
    if verb in _SQL_VERBS and db_system not in ("redis", "memcached"):
        return sanitize_sql(s, double_quoted_are_strings=db_system == "mysql")
    parts = s.split(None, 1)
    return parts[0] + (" ?" if len(parts) > 1 else "")


_WORD_URL = re.compile(r"\S*(?:/|://)\S*")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'")


def sanitize_span_name(name: str) -> str:
    """Ids out of span names: every path/URL word sanitized (query dropped), quoted literals → ?."""
    if "/" in name:
        name = _WORD_URL.sub(lambda m: sanitize_url(m.group(0), "drop", frozenset(), str), name)
    if "'" in name:
        name = _QUOTED.sub("?", name)
    return name
