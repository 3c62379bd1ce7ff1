"""Rules per attribute key, allowlist mode, URL/SQL sanitizers, span names, audit counts."""

import pytest

from operators.privacy import (
    DEFAULT_DETECTOR_ACTIONS,
    REDACTED,
    KeyRing,
    Protector,
    Rule,
    Scanner,
    Tokenizer,
    UrlPolicy,
    sanitize_path,
    sanitize_span_name,
    sanitize_statement,
    sanitize_url,
)
from pipeline.config import ConfigError, parse
from pipeline.privacy import build_protector

TOK = Tokenizer(KeyRing({"k1": bytes(range(32))}))


def protector(**kw):
    kw.setdefault("url", UrlPolicy("tokenize", frozenset({"limit", "currency"})))
    return Protector(TOK, Scanner(TOK, DEFAULT_DETECTOR_ACTIONS), **kw)


def test_semantic_convention_defaults():
    p = protector()
    counts = {}
    out = p.protect_attributes(
        {
            "user.id": "u-12345",
            "enduser.id": "u-12345",
            "user.email": "jane@example.com",
            "client.address": "203.0.113.7",
            "net.peer.ip": "10.0.0.1",
            "http.request.header.authorization": ["Bearer abc.def.ghi"],
            "payment.card.number": "4111 1111 1111 1111",
            "payment.card.last4": "1111",
            "db.system": "postgresql",
            "db.statement": "SELECT * FROM users WHERE email = 'jane@example.com' AND id = 42",
            "url.full": "https://shop.example.com/users/12345/orders?user_id=u-12345&limit=4#tok",
            "url.query": "user_id=u-12345&currency=USD",
            "k8s.pod.ip": "10.42.0.7",
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "session.id": "386a23a9fc083f43",
            "app.secret": "hunter2",
            "note": "mail jane@example.com",
        },
        counts,
    )
    assert out["user.id"] == out["enduser.id"] == TOK.token("u-12345")
    assert out["user.email"] == TOK.token("jane@example.com")
    assert out["client.address"] == TOK.token("203.0.113.7") and out["net.peer.ip"] == TOK.token("10.0.0.1")
    assert out["http.request.header.authorization"] == [REDACTED]
    assert out["payment.card.number"] == REDACTED and out["payment.card.last4"] == "1111"
    assert out["db.statement"] == "SELECT * FROM users WHERE email = ? AND id = ?"
    assert out["url.full"] == f"https://shop.example.com/users/{{id}}/orders?user_id={TOK.token('u-12345')}&limit=4"
    assert out["url.query"] == f"user_id={TOK.token('u-12345')}&currency=USD"
    assert out["k8s.pod.ip"] == TOK.token("10.42.0.7")  # infrastructure: kept, but scanned like any value
    assert out["http.request.method"] == "GET" and out["http.response.status_code"] == 200
    assert out["session.id"] == TOK.token("386a23a9fc083f43")
    assert out["app.secret"] == REDACTED
    assert out["note"] == "mail " + TOK.token("jane@example.com")
    assert counts["rule:user-id"] == 3 and counts["rule:card-number"] == 1 and counts["detector:email"] == 1
    assert all(k.startswith(("rule:", "detector:")) for k in counts)


def test_config_rules_come_first_and_glob_or_regex_keys():
    p = protector(
        rules=[
            Rule("keep-user", "keep", ("user.id",)),
            Rule("drop-debug", "drop", (), r"debug\..*"),
            Rule("hash-acct", "hash", ("acct.*",)),
        ]
    )
    counts = {}
    out = p.protect_attributes({"user.id": "u-1", "debug.dump": "x", "acct.no": 12345, "user.email": "a@b.co"}, counts)
    assert out == {"user.id": "u-1", "acct.no": TOK.hash("12345"), "user.email": TOK.token("a@b.co")}
    assert counts == {"rule:drop-debug": 1, "rule:hash-acct": 1, "rule:user-email": 1}


def test_keep_still_scans_unless_told_not_to():
    p = protector(rules=[Rule("k", "keep", ("free.*",)), Rule("raw", "keep", ("trusted.*",), scan=False)])
    out = p.protect_attributes({"free.text": "ip 198.51.100.1", "trusted.text": "ip 198.51.100.1"}, {})
    assert out == {"free.text": "ip " + TOK.token("198.51.100.1"), "trusted.text": "ip 198.51.100.1"}


@pytest.mark.parametrize("unknown", ["drop", "redact"])
def test_allowlist_fails_closed(unknown):
    p = protector(mode="allowlist", allowed_keys=["http.*", "user.id"], unknown_keys=unknown)
    counts = {}
    span = {
        "name": "GET /x",
        "attributes": {
            "http.request.method": "GET",
            "user.id": "u-1",
            "secret.thing": "s3cr3t",
            "sampling.policy": "errors",
        },
        "events": [{"name": "e", "time_unix_nano": 0, "attributes": {"exception.message": "boom"}}],
        "links": [],
    }
    p.protect_span(span, counts)
    attrs = span["attributes"]
    assert attrs["http.request.method"] == "GET" and attrs["user.id"] == TOK.token("u-1")
    assert "sampling.policy" not in attrs  # a producer's value under tailsift's own key: dropped
    if unknown == "drop":
        assert "secret.thing" not in attrs and span["events"][0]["attributes"] == {}
    else:
        assert attrs["secret.thing"] == REDACTED
    assert "s3cr3t" not in repr(span) and "boom" not in repr(span)
    assert counts["rule:allowlist"] == 2


def test_allowlist_mode_requires_allowed_keys_in_config():
    with pytest.raises(ConfigError, match="allowed_keys"):
        parse({"privacy": {"enabled": True, "mode": "allowlist"}})
    with pytest.raises(ConfigError, match="privacy.rules.0.key_regex"):
        parse({"privacy": {"rules": [{"name": "x", "key_regex": "(", "action": "drop"}]}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse({"privacy": {"keys": {"secret": "abc"}}})


def test_span_name_status_events_links_resource():
    p = protector()
    counts = {}
    span = {
        "name": "GET /users/12345/orders",
        "status_message": "no card for jane@example.com",
        "trace_state": "",
        "attributes": {},
        "events": [
            {
                "name": "exception",
                "time_unix_nano": 1,
                "attributes": {"exception.message": "card 4111111111111111 declined"},
            }
        ],
        "links": [{"trace_id": b"t" * 16, "span_id": b"s" * 8, "trace_state": "", "attributes": {"user.id": "u-9"}}],
    }
    p.protect_span(span, counts)
    assert span["name"] == "GET /users/{id}/orders"
    assert span["status_message"] == "no card for " + TOK.token("jane@example.com")
    assert span["events"][0]["attributes"]["exception.message"] == "card [REDACTED:card] declined"
    assert span["links"][0]["attributes"]["user.id"] == TOK.token("u-9")
    batch = {
        "resource": {"service.name": "shop", "host.name": "h-1", "owner.email": "ops@example.com"},
        "scope_name": "",
    }
    p.protect_batch(batch, counts)
    assert batch["resource"] == {
        "service.name": "shop",
        "host.name": "h-1",
        "owner.email": TOK.token("ops@example.com"),
    }
    assert counts["rule:span-name"] == 1


@pytest.mark.parametrize(
    "path,want",
    [
        ("/users/12345/orders", "/users/{id}/orders"),
        ("/cart/u-58590/items", "/cart/{id}/items"),
        ("/o/550e8400-e29b-41d4-a716-446655440000", "/o/{id}"),
        ("/blob/deadbeefcafe1234", "/blob/{id}"),
        ("/api/v2/oauth2/token", "/api/v2/oauth2/token"),
        ("/cart/{userId}", "/cart/{userId}"),
        ("/product/:id", "/product/:id"),
    ],
)
def test_sanitize_path(path, want):
    assert sanitize_path(path) == want


def test_sanitize_url_modes():
    url = "https://bob:pw@api.example.com/v1/users/987/x?user_id=u-1&limit=4#frag"
    keep = frozenset({"limit"})
    assert sanitize_url(url, "strip", keep, str) == "https://api.example.com/v1/users/{id}/x?user_id=&limit=4"
    assert (
        sanitize_url(url, "redact", keep, str) == "https://api.example.com/v1/users/{id}/x?user_id=[REDACTED]&limit=4"
    )
    assert sanitize_url(url, "drop", keep, str) == "https://api.example.com/v1/users/{id}/x"
    assert (
        sanitize_url(url, "tokenize", keep, lambda v: f"T({v})")
        == "https://api.example.com/v1/users/{id}/x?user_id=T(u-1)&limit=4"
    )


@pytest.mark.parametrize(
    "stmt,system,want",
    [
        (
            "SELECT a FROM t WHERE b = 'x''y' AND c IN (1, 2.5, -3) AND d = $1",
            "postgresql",
            "SELECT a FROM t WHERE b = ? AND c IN (?, ?, -?) AND d = $1",
        ),
        ("INSERT INTO t (e) VALUES ('jane@example.com')", "postgresql", "INSERT INTO t (e) VALUES (?)"),
        ('SELECT * FROM t WHERE e = "jane@example.com"', "mysql", "SELECT * FROM t WHERE e = ?"),
        ("SELECT * FROM t WHERE e = 'unterminated jane@example.com", "", "SELECT * FROM t WHERE e = ?"),
        ("HGETALL cart:u-58590", "redis", "HGETALL ?"),
        ("SET session:abc 1", "redis", "SET ?"),
        (
            '{"find": "users", "filter": {"email": "jane@example.com", "age": 3}}',
            "mongodb",
            '{"find": ?, "filter": {"email": ?, "age": ?}}',
        ),
        ("SELECT t1.a FROM table2 t1", "postgresql", "SELECT t1.a FROM table2 t1"),
    ],
)
def test_sanitize_statement(stmt, system, want):
    assert sanitize_statement(stmt, system) == want


def test_span_names_lose_ids_but_keep_templates():
    assert sanitize_span_name("GET /users/123") == "GET /users/{id}"
    assert sanitize_span_name("GET /cart/{userId}") == "GET /cart/{userId}"
    assert sanitize_span_name("GET https://x.example/a/12345?q=1") == "GET https://x.example/a/{id}"
    assert sanitize_span_name("SELECT shop.orders") == "SELECT shop.orders"


def test_build_protector_from_config_and_dimension():
    cfg = parse(
        {
            "privacy": {
                "enabled": True,
                "detectors": {"ipv4": {"enabled": False, "action": "tokenize"}},
                "url": {"query_values": "strip"},
            }
        }
    )
    p = build_protector(cfg.privacy, {"TAILSIFT_TOKEN_KEYS": "k1:" + bytes(range(32)).hex()})
    assert p.protect_attributes({"note": "ip 198.51.100.1"}, {}) == {"note": "ip 198.51.100.1"}
    assert p.protect_attributes({"url.full": "/a/123?x=1"}, {}) == {"url.full": "/a/{id}?x="}
    assert p.dimension("GET /users/42 jane@example.com") == "GET /users/{id} " + TOK.token("jane@example.com")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=80), st.binary(max_size=40)
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))
_keys = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["user.id", "url.full", "db.statement", "user.email", "client.address", "http.request.header.authorization"]
    ),
)


@given(st.dictionaries(_keys, _values, max_size=8), st.text(max_size=80), st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_protector_never_raises_on_arbitrary_spans(attrs, name, message):
    for p in (protector(), protector(mode="allowlist", allowed_keys=["user.*", "url.*"], unknown_keys="redact")):
        span = {
            "name": name,
            "status_message": message,
            "trace_state": "",
            "attributes": dict(attrs),
            "events": [{"name": name, "time_unix_nano": 0, "attributes": dict(attrs)}],
            "links": [],
        }
        p.protect_span(span, {})
        assert isinstance(span["name"], str)
