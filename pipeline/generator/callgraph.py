"""A seeded, realistic multi-service trace model: the load source of tests, demo and benchmarks.

Pure: no Kafka, no asyncio, no clock. ``TraceGenerator(config).trace(start_ns)`` returns the next
trace as ``SpanBatch`` dicts (``schemas/span_batch.v1.avsc``) grouped the way OpenTelemetry SDKs
export them: one batch per (service instance, exporter flush), spans in the order they ended.

The shop (8 services, 2-3 replicas each, each replica its own resource and flush timer)::

    frontend ──┬─ inventory ── redis / postgresql          product page (fan-out of 4 calls)
               ├─ cart ── redis                             add to cart
               ├─ recommendation ── inventory               checkout (below)
               ├─ shipping ── mysql                         carrier-rate sync job (root: shipping)
               └─ checkout ─┬─ cart, then {inventory, shipping} in parallel, then payment
                            │   (payment ── external gateway + postgresql), postgresql INSERT,
                            │   cart DELETE
                            └─ PRODUCER ``orders`` ──(queue delay)──> email-worker CONSUMER
                               (postgresql, render, SMTP), sometimes redelivered with
                               messaging.retry.count

Latencies are log-normal per operation. ``slow_rate`` of the traces get one operation 10-50x
slower (and at least 10-50 ms, so that a slow cache call shows; at most 2 s). ``error_rate`` of
the traces get exactly one injected failure (a span with ERROR status, a status message and an
``exception`` event), which propagates to the parent server span and up the synchronous call
chain unless the caller handles it (recommendations, shipping quotes and cart badges degrade
gracefully; checkout retries a failed payment half of the time; e-mail is async and
redelivered). No other span is ever ERROR, so ``has_error`` is exactly "error injected".
The e-mail consumer's spans of a redelivered attempt (after a rebalance or a failed send) come
seconds after the rest, late on purpose (``GeneratedTrace.late``); every other batch is exported
within ``on_time_horizon_ms()`` of the trace's first. Traffic mix: product page 45%, add to
cart 20%, checkout 30%, rate-sync job 5%; on average ~19 spans in ~6 batches per trace
(checkouts ~26 spans in ~8 batches).

PII that a redaction stage must find: ``enduser.id``/``user.id``, ``user.email``, client IPs,
a JWT in ``http.request.header.authorization`` (a string array, as in the semantic conventions),
e-mail addresses and user ids inside SQL literals and URLs, an API key in a query string, and in
some checkouts a Luhn-valid card number (``payment.card.number``). ``GeneratorConfig.canaries``
plants exact strings in every trace (on the root span, and in the places the model uses the same
kind of value: ``user.email``, ``user.id``/``enduser.id``, card, ``client.address``).

Encoding: the model builds plain dicts; every span's ``detail`` (status message, attributes,
events, links) and every batch are encoded by ``pipeline.codecs.avro`` (fastavro, schemas parsed
once). Resources and per-operation static attributes are dicts built once and copied/extended
per span. ``GeneratedTrace.encoded`` holds the Kafka values, so producers need not re-encode.
Measured on one core of the 2-core dev machine: ~1,000 traces/s (~19K spans/s, ~9 KB of Avro
per trace); ~85% of that time is fastavro (attribute maps are unions: ~2 us per value), the
model alone runs at ~7,000 traces/s.
"""

from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass, field
from statistics import NormalDist

from pipeline.codecs import avro

__all__ = [
    "GeneratorConfig",
    "GeneratedTrace",
    "TraceGenerator",
    "SERVICES",
    "luhn_valid",
    "on_time_horizon_ms",
]

# Standard normal draws come from a quantile table: one random() per draw instead of
# Random.gauss's Python-level Box-Muller. It spans +-4 sigma; the slow tail is injected anyway.
_NORMAL_SIZE = 32768
_NORMAL_TABLE = tuple(NormalDist().inv_cdf((i + 0.5) / _NORMAL_SIZE) for i in range(_NORMAL_SIZE))

_STATUS_NAMES = ("UNSET", "OK", "ERROR")
UNSET, OK, ERROR = 0, 1, 2
_encode_detail = avro.encode_detail
_encode_batch = avro.encode_span_batch


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 12 or any(not (c.isdigit() or c in " -") for c in number):
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn_check_digit(partial: str) -> str:
    # from the right, every other digit starting with the last is doubled once the check
    # digit is appended
    total = sum(map(_LUHN_DOUBLED.__getitem__, map(int, partial[::-2])))
    total += sum(map(int, partial[-2::-2]))
    return str(-total % 10)


# --------------------------------------------------------------------------------------------
# Timing bounds: which spans are late on purpose, and how late the others can be

# An async consumer's queue wait is exponential with mean ``queue_delay_ms``, cut at this many
# means (0.7 % of waits): a bounded wait, so a tail-sampling job can be sized to see it.
QUEUE_DELAY_MAX_MEANS = 5.0
# A slow-tail operation is 10-50x slower, but no slower than this (a slow call, not a hung one).
SLOW_OP_MAX_MS = 2000.0
_SLOW_OP_MAX_NS = SLOW_OP_MAX_MS * 1e6
# The first attempt of an order's e-mail dies in a rebalance this often; it is redelivered 3-10 s
# later. That redelivery, and one after a failed SMTP send (1-5 s backoff), are the spans the
# model makes late on purpose (``GeneratedTrace.late``).
REBALANCE_REDELIVERY_RATE = 0.03
# Everything else but the queue wait, between a trace's first exported batch and its last batch
# not late on purpose: the slowest request (one operation at SLOW_OP_MAX_MS, a payment retried
# after a gateway timeout), the e-mail consumer's work and its 2 s exporter flush timer. Measured:
# at most 4.24 s with no queue wait over 40K traces at slow_rate 0.2 (tests/unit/test_generator.py
# asserts the bound over other seeds and rates).
_ON_TIME_SPREAD_MS = 4500.0


@dataclass
class GeneratorConfig:
    seed: int = 1
    error_rate: float = 0.05  # fraction of traces with an injected error
    slow_rate: float = 0.02  # fraction of traces with a slow-tail operation
    queue_delay_ms: float = 200.0  # mean extra delay of the async consumer spans
    canaries: dict[str, str] | None = None  # attribute key -> exact value planted in every trace


@dataclass
class GeneratedTrace:
    trace_id: bytes  # 16 bytes from the seeded RNG
    batches: list[dict]  # SpanBatch dicts, one per (service instance, flush), in export order
    span_count: int
    has_error: bool  # some span has status ERROR (exactly the traces with an injected error)
    is_slow: bool  # a slow-tail operation was injected
    duration_ns: int  # max end - min start over all spans
    spans_by_service: dict[str, int]
    errors_by_service: dict[str, int]  # spans with status ERROR per service
    root_service: str
    # Extras beyond the agreed API:
    encoded: list[bytes] = field(default_factory=list)  # Avro value of each batch (same order)
    export_ns: list[int] = field(default_factory=list)  # simulated flush time of each batch
    flow: str = ""  # which request type: product, cart, checkout, rate-sync
    # per batch: late on purpose (only spans of a redelivered consumer attempt, exported seconds
    # after the rest); every other batch is exported within on_time_horizon_ms() of the first
    late: list[bool] = field(default_factory=list)

    def messages(self) -> list[tuple[bytes, bytes]]:
        """(Kafka key, value) per batch."""
        return [(self.trace_id, v) for v in self.encoded]


# --------------------------------------------------------------------------------------------
# Topology: services, replicas (resources), operations

SERVICES = ("frontend", "checkout", "cart", "payment", "inventory", "shipping", "recommendation", "email-worker")

_SERVICE_INFO = {
    # name: (sdk language, version, replicas, port, instrumentation scope, flush interval ms)
    "frontend": ("nodejs", "2.14.1", 3, 8080, "@opentelemetry/instrumentation-http", 500),
    "checkout": ("go", "1.9.0", 2, 5050, "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", 1000),
    "cart": ("dotnet", "3.2.7", 2, 7070, "OpenTelemetry.Instrumentation.AspNetCore", 1000),
    "payment": ("java", "5.0.3", 2, 8443, "io.opentelemetry.spring-webmvc-6.0", 1000),
    "inventory": ("python", "1.4.2", 3, 8000, "opentelemetry.instrumentation.flask", 1000),
    "shipping": ("go", "0.18.4", 2, 9090, "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", 1000),
    "recommendation": ("python", "0.7.0", 2, 8001, "opentelemetry.instrumentation.fastapi", 1000),
    "email-worker": ("java", "2.3.1", 2, 0, "io.opentelemetry.kafka-clients-2.6", 2000),
}
_SDK_VERSION = {"nodejs": "1.26.0", "go": "1.28.0", "dotnet": "1.9.0", "java": "1.42.1", "python": "1.27.0"}


def on_time_horizon_ms(config: GeneratorConfig | None = None) -> float:
    """How long after a trace's first batch every batch not late on purpose is exported (flush
    times, ``GeneratedTrace.export_ns``): a tail-sampling decision this long after a trace's first
    span has seen all of it but its redelivered consumer attempts (``GeneratedTrace.late``)."""
    config = config or GeneratorConfig()
    return _ON_TIME_SPREAD_MS + QUEUE_DELAY_MAX_MEANS * config.queue_delay_ms


class _Replica:
    __slots__ = ("index", "resource", "resource_bytes", "ip", "phase_ns")

    def __init__(self, index, resource, ip, phase_ns):
        self.index = index
        self.resource = resource  # shared by all the replica's batches (never mutated)
        self.resource_bytes = avro.encode_resource(resource)  # encoded once: every batch carries it
        self.ip = ip  # net.peer.ip of client spans calling it, client.address of its callees
        self.phase_ns = phase_ns


class _Service:
    __slots__ = ("index", "name", "port", "host", "base_url", "scope", "flush_ns", "replicas", "n")

    def __init__(self, index: int, name: str, topo: random.Random):
        lang, version, n, port, scope, flush_ms = _SERVICE_INFO[name]
        self.index = index
        self.name = name
        self.port = port
        self.host = name
        self.base_url = f"http://{name}:{port}"
        self.scope = scope
        self.flush_ns = flush_ms * 1_000_000
        self.replicas = []
        rs = "".join(topo.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(9))
        for i in range(n):
            pod = f"{name}-{rs}-" + "".join(topo.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            ip = f"10.42.{topo.randrange(0, 8)}.{topo.randrange(2, 254)}"
            resource = {
                "service.name": name,
                "service.namespace": "shop",
                "service.version": version,
                "service.instance.id": "%08x-%04x-4%03x-a%03x-%012x"
                % (
                    topo.getrandbits(32),
                    topo.getrandbits(16),
                    topo.getrandbits(12),
                    topo.getrandbits(12),
                    topo.getrandbits(48),
                ),
                "deployment.environment.name": "production",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.language": lang,
                "telemetry.sdk.version": _SDK_VERSION[lang],
                "host.name": pod,
                "k8s.namespace.name": "shop",
                "k8s.deployment.name": name,
                "k8s.pod.name": pod,
                "k8s.pod.ip": ip,
                "cloud.provider": "aws",
                "cloud.region": "eu-west-1",
            }
            self.replicas.append(_Replica(i, resource, ip, topo.randrange(self.flush_ns)))
        self.n = n


class _Op:
    """One operation: a span name/kind on a service, its latency law and constant attributes."""

    __slots__ = ("key", "svc", "name", "kind", "mu", "sigma", "static_attrs", "exc", "timeout_ns")

    def __init__(self, key, svc: _Service, name, kind, median_ms, sigma, attrs=None, exc=None, timeout_ms=None):
        self.key = key
        self.svc = svc
        self.name = name
        self.kind = kind
        self.mu = math.log(median_ms * 1e6)
        self.sigma = sigma
        self.static_attrs = attrs or {}  # copied, never mutated
        self.exc = exc  # (exception.type, exception.message, stacktrace) when it can fail
        self.timeout_ns = int(timeout_ms * 1e6) if timeout_ms else 0

    def __repr__(self):
        return f"<op {self.key}>"


class _Ctx:
    """Per-trace request data (the PII the spans leak)."""

    __slots__ = (
        "user_id",
        "email",
        "ip",
        "ua",
        "session",
        "jwt",
        "card",
        "card_fmt",
        "order_id",
        "skus",
        "qtys",
        "zip",
        "total_cents",
        "leak_card",
    )


_FIRST = (
    "jane",
    "john",
    "maria",
    "wei",
    "ahmed",
    "olga",
    "lucas",
    "emma",
    "noah",
    "sofia",
    "liam",
    "mia",
    "arjun",
    "yuki",
    "fatima",
    "pierre",
    "anna",
    "diego",
    "chloe",
    "omar",
)
_LAST = (
    "doe",
    "smith",
    "garcia",
    "chen",
    "khan",
    "ivanova",
    "silva",
    "muller",
    "rossi",
    "tanaka",
    "nguyen",
    "kowalski",
    "dubois",
    "okafor",
    "larsen",
    "patel",
)
_DOMAINS = ("example.com", "mail.example.org", "example.net", "corp.example.com")
_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "shop-android/4.12.0 (Pixel 8; Android 14)",
)
_PUBLIC_FIRST_OCTET = (23, 31, 37, 45, 52, 63, 72, 81, 88, 93, 104, 145, 176, 185, 203, 212)
_JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT","kid":"shop-2024-06"}').rstrip(b"=").decode()
_CARRIERS = ("dhl", "ups", "fedex", "gls", "dpd")

_KEY_EMAIL = ("user.email", "enduser.email", "email")
_KEY_USER = ("user.id", "enduser.id")
_KEY_IP = ("client.address",)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


_EXC_ATTRS: dict[tuple, dict] = {}  # (exception triple, escaped) -> event attributes


def _exception_event(t: int, exc: tuple, escaped: bool) -> dict:
    """An ``exception`` SpanEvent; its attributes are built once per exception and shared."""
    attrs = _EXC_ATTRS.get((exc, escaped))
    if attrs is None:
        etype, message, stack = exc
        attrs = {"exception.type": etype, "exception.message": message, "exception.stacktrace": stack}
        if escaped:
            attrs["exception.escaped"] = True
        _EXC_ATTRS[(exc, escaped)] = attrs
    return {"time_unix_nano": t, "name": "exception", "attributes": attrs}


class _Flow:
    __slots__ = ("name", "weight", "run", "err_ops", "slow_ops")

    def __init__(self, name, weight, run, err_ops, slow_ops):
        self.name, self.weight, self.run = name, weight, run
        self.err_ops, self.slow_ops = tuple(err_ops), tuple(slow_ops)


# --------------------------------------------------------------------------------------------


class TraceGenerator:
    """Seeded trace source. Same seed and same ``start_ns`` sequence give the same bytes."""

    def __init__(self, config: GeneratorConfig | None = None):
        config = config or GeneratorConfig()
        if not 0.0 <= config.error_rate <= 1.0 or not 0.0 <= config.slow_rate <= 1.0:
            raise ValueError("error_rate and slow_rate must be within [0, 1]")
        if config.queue_delay_ms < 0:
            raise ValueError("queue_delay_ms must be >= 0")
        self.config = config
        rng = random.Random(config.seed)
        self._rng = rng
        self._random = rng.random
        self._bits = rng.getrandbits
        self._exp = math.exp
        self._error_rate = config.error_rate
        self._slow_rate = config.slow_rate
        self._queue_mean_ns = config.queue_delay_ms * 1e6
        self._queue_max_ns = QUEUE_DELAY_MAX_MEANS * self._queue_mean_ns
        self._canaries = {str(k): v for k, v in (config.canaries or {}).items()}
        # The topology is the same for every seed (stable resources across runs and seeds).
        topo = random.Random(20240611)
        self.services = {name: _Service(i, name, topo) for i, name in enumerate(SERVICES)}
        self._build_ops()
        self._skus = [f"SKU-{topo.randrange(10000, 99999)}" for _ in range(400)]
        self._prices = {s: topo.choice((499, 999, 1299, 1999, 2499, 4999, 8999, 12900)) for s in self._skus}
        self._flows = (
            _Flow(
                "product",
                0.45,
                self._flow_product,
                (self.op_inv_redis_get, self.op_rec_predict, self.op_ship_select, self.op_cart_hgetall),
                (
                    self.op_inv_redis_get,
                    self.op_rec_predict,
                    self.op_ship_select,
                    self.op_inv_select_batch,
                    self.op_fe_render,
                ),
            ),
            _Flow(
                "cart",
                0.20,
                self._flow_cart,
                (self.op_cart_hset, self.op_inv_redis_get, self.op_rec_predict),
                (self.op_cart_hset, self.op_inv_redis_get, self.op_rec_predict, self.op_cart_expire),
            ),
            _Flow(
                "checkout",
                0.30,
                self._flow_checkout,
                (
                    self.op_pay_gateway,
                    self.op_inv_update,
                    self.op_co_insert,
                    self.op_email_smtp,
                    self.op_ship_select,
                    self.op_cart_hgetall,
                ),
                (
                    self.op_pay_gateway,
                    self.op_inv_update,
                    self.op_co_insert,
                    self.op_email_smtp,
                    self.op_ship_select,
                    self.op_pay_insert,
                ),
            ),
            _Flow(
                "rate-sync",
                0.05,
                self._flow_rate_sync,
                (self.op_ship_carrier,),
                (self.op_ship_carrier, self.op_ship_replace),
            ),
        )
        acc, self._flow_cdf = 0.0, []
        for f in self._flows:
            acc += f.weight
            self._flow_cdf.append((acc, f))
        # per-trace state
        self._spans: list = []
        self._tid = b""
        self._trace_state = ""
        self._err_op = None
        self._slow_op = None
        self._slow_mult = 1.0
        self._redelivery = False  # spans emitted now belong to a redelivered consumer attempt

    # ---- topology -------------------------------------------------------------------------

    def _build_ops(self) -> None:
        S = self.services
        fe, co, cart, pay, inv, ship, rec, email = (S[n] for n in SERVICES)

        def server(svc, method, route, median, sigma=0.35):
            return _Op(
                f"{svc.name}:{method} {route}",
                svc,
                f"{method} {route}",
                "SERVER",
                median,
                sigma,
                {
                    "http.request.method": method,
                    "http.route": route,
                    "url.scheme": "https" if svc is fe else "http",
                    "server.address": "shop.example.com" if svc is fe else svc.host,
                    "server.port": 443 if svc is fe else svc.port,
                    "network.protocol.version": "1.1",
                },
            )

        def client(svc, method, target: _Service, route):
            return _Op(
                f"{svc.name}->{target.name}:{method} {route}",
                svc,
                method,
                "CLIENT",
                1.0,
                0.3,
                {"http.request.method": method, "server.address": target.host, "server.port": target.port},
            )

        def db(svc, system, dbname, op, table, median, sigma=0.5, exc=None, timeout_ms=None, host=None, port=None):
            attrs = {"db.system": system, "db.operation.name": op}
            if dbname:
                attrs["db.namespace"] = dbname
            if table:
                attrs["db.collection.name"] = table
            attrs["server.address"] = host or f"{system}-{svc.name}"
            attrs["server.port"] = port or {"postgresql": 5432, "redis": 6379, "mysql": 3306}[system]
            name = f"{op} {dbname}.{table}" if table else op
            return _Op(f"{svc.name}:db {name}", svc, name, "CLIENT", median, sigma, attrs, exc, timeout_ms)

        def internal(svc, name, median, sigma=0.4, attrs=None, exc=None):
            return _Op(f"{svc.name}:{name}", svc, name, "INTERNAL", median, sigma, attrs, exc)

        # "middleware" self-time of handlers: ops without spans, used only for latencies
        self.op_mw_small = _Op("mw-small", fe, "mw", "INTERNAL", 0.6, 0.5)
        self.op_mw = _Op("mw", fe, "mw", "INTERNAL", 1.5, 0.5)
        self.op_net = _Op("net", fe, "net", "INTERNAL", 0.25, 0.4)
        self.op_stagger = _Op("stagger", fe, "stagger", "INTERNAL", 0.15, 0.6)
        self.op_backoff = _Op("backoff", co, "backoff", "INTERNAL", 80.0, 0.3)

        # frontend
        self.op_fe_product = server(fe, "GET", "/product/:id", 2.0)
        self.op_fe_cart_add = server(fe, "POST", "/api/cart/items", 2.0)
        self.op_fe_checkout = server(fe, "POST", "/api/checkout", 3.0)
        self.op_fe_render = internal(fe, "render product-page", 6.0, 0.4, {"app.template": "product-page.hbs"})
        self.op_fe_inv_c = client(fe, "GET", inv, "/products/{sku}")
        self.op_fe_cart_c = client(fe, "GET", cart, "/cart/{userId}")
        self.op_fe_cart_add_c = client(fe, "POST", cart, "/cart/{userId}/items")
        self.op_fe_rec_c = client(fe, "GET", rec, "/recommendations")
        self.op_fe_ship_c = client(fe, "GET", ship, "/shipping/estimate")
        self.op_fe_co_c = client(fe, "POST", co, "/checkout")

        # inventory
        self.op_inv_product = server(inv, "GET", "/products/<sku>", 1.2)
        self.op_inv_batch = server(inv, "GET", "/products", 1.5)
        self.op_inv_reserve = server(inv, "POST", "/inventory/reserve", 1.5)
        self.op_inv_redis_get = db(
            inv,
            "redis",
            "",
            "GET",
            "",
            0.5,
            0.6,
            timeout_ms=250,
            exc=(
                "redis.exceptions.TimeoutError",
                "Timeout reading from redis-inventory:6379",
                'Traceback (most recent call last):\n  File "/app/inventory/cache.py", '
                "line 41, in get_product\n    raw = self.client.get(key)\n"
                "redis.exceptions.TimeoutError: Timeout reading from redis-inventory:6379",
            ),
        )
        self.op_inv_redis_set = db(inv, "redis", "", "SET", "", 0.5, 0.5)
        self.op_inv_select = db(inv, "postgresql", "inventory", "SELECT", "products", 1.8)
        self.op_inv_select_batch = db(inv, "postgresql", "inventory", "SELECT", "products", 3.0)
        self.op_inv_update = db(
            inv,
            "postgresql",
            "inventory",
            "UPDATE",
            "stock",
            2.5,
            0.5,
            exc=(
                "psycopg.errors.DeadlockDetected",
                "deadlock detected\nDETAIL:  Process 48213 waits for ShareLock on transaction "
                "991873; blocked by process 48101.",
                'Traceback (most recent call last):\n  File "/app/inventory/reserve.py", '
                "line 88, in reserve\n    cur.execute(stmt, params)\n"
                "psycopg.errors.DeadlockDetected: deadlock detected",
            ),
        )

        # cart
        self.op_cart_get = server(cart, "GET", "/cart/{userId}", 0.8)
        self.op_cart_add = server(cart, "POST", "/cart/{userId}/items", 1.0)
        self.op_cart_del = server(cart, "DELETE", "/cart/{userId}", 0.7)
        self.op_cart_inv_c = client(cart, "GET", inv, "/products/{sku}")
        redis_timeout = (
            "StackExchange.Redis.RedisTimeoutException",
            "Timeout performing {cmd} (1000ms), next: {cmd} cart, inst: 0, qu: 0, "
            "qs: 3, aw: False, rs: ReadAsync, ws: Idle, in: 0, serverEndpoint: "
            "redis-cart:6379",
            "StackExchange.Redis.RedisTimeoutException: Timeout performing {cmd}\n"
            "   at StackExchange.Redis.ConnectionMultiplexer.ExecuteSyncImpl[T]\n"
            "   at Cart.Store.RedisCartStore.{meth}(String userId) in "
            "/src/Cart/Store/RedisCartStore.cs:line 57",
        )
        self.op_cart_hgetall = db(
            cart,
            "redis",
            "",
            "HGETALL",
            "",
            0.6,
            0.5,
            timeout_ms=1000,
            exc=tuple(s.format(cmd="HGETALL", meth="GetCartAsync") for s in redis_timeout),
        )
        self.op_cart_hset = db(
            cart,
            "redis",
            "",
            "HSET",
            "",
            0.6,
            0.5,
            timeout_ms=1000,
            exc=tuple(s.format(cmd="HSET", meth="AddItemAsync") for s in redis_timeout),
        )
        self.op_cart_expire = db(cart, "redis", "", "EXPIRE", "", 0.4, 0.5)
        self.op_cart_delcmd = db(cart, "redis", "", "DEL", "", 0.5, 0.5)

        # recommendation
        self.op_rec_get = server(rec, "GET", "/recommendations", 1.0)
        self.op_rec_predict = internal(
            rec,
            "model.predict",
            14.0,
            0.5,
            {"app.model.name": "als-v7", "app.recommendations.limit": 4},
            exc=(
                "KeyError",
                "'embedding not found for product'",
                'Traceback (most recent call last):\n  File "/app/rec/model.py", line 112, '
                "in predict\n    vec = self.embeddings[product_id]\nKeyError: 'embedding not "
                "found for product'",
            ),
        )
        self.op_rec_inv_c = client(rec, "GET", inv, "/products")

        # shipping
        self.op_ship_est = server(ship, "GET", "/shipping/estimate", 0.8)
        self.op_ship_quote = server(ship, "POST", "/shipping/quote", 1.0)
        self.op_ship_select = db(
            ship,
            "mysql",
            "shipping",
            "SELECT",
            "rates",
            2.0,
            0.5,
            timeout_ms=500,
            exc=(
                "*mysql.MySQLError",
                "Error 1205 (HY000): Lock wait timeout exceeded; try restarting transaction",
                "goroutine 4182 [running]:\nshipping/internal/rates.(*Store).Quote(...)\n"
                "\t/src/internal/rates/store.go:73 +0x1c4",
            ),
        )
        self.op_ship_sync = internal(
            ship,
            "carrier-rates sync",
            1.0,
            0.3,
            {"app.job.name": "carrier-rates-sync", "app.job.schedule": "*/15 * * * *"},
        )
        self.op_ship_carrier = _Op(
            "shipping->carrier",
            ship,
            "GET",
            "CLIENT",
            90.0,
            0.45,
            {"http.request.method": "GET", "server.port": 443},
            (
                "*url.Error",
                'Get "https://api.carrier.example/v2/rates": context deadline '
                "exceeded (Client.Timeout exceeded while awaiting headers)",
                "goroutine 77 [running]:\nshipping/internal/carrier.(*Client).Rates(...)\n"
                "\t/src/internal/carrier/client.go:58 +0x2a1",
            ),
            timeout_ms=2000,
        )
        self.op_ship_replace = db(ship, "mysql", "shipping", "REPLACE", "rates", 3.0)

        # checkout
        self.op_co_checkout = server(co, "POST", "/checkout", 2.0)
        self.op_co_cart_c = client(co, "GET", cart, "/cart/{userId}")
        self.op_co_cart_del_c = client(co, "DELETE", cart, "/cart/{userId}")
        self.op_co_inv_c = client(co, "POST", inv, "/inventory/reserve")
        self.op_co_ship_c = client(co, "POST", ship, "/shipping/quote")
        self.op_co_pay_c = client(co, "POST", pay, "/payments/charge")
        self.op_co_insert = db(
            co,
            "postgresql",
            "orders",
            "INSERT",
            "orders",
            3.5,
            0.5,
            exc=(
                "*pq.Error",
                "pq: could not serialize access due to concurrent update",
                "goroutine 219 [running]:\ncheckout/internal/orders.(*Repo).Insert(...)\n"
                "\t/src/internal/orders/repo.go:102 +0x3b8",
            ),
        )
        self.op_co_publish = _Op(
            "checkout:publish orders",
            co,
            "publish orders",
            "PRODUCER",
            1.2,
            0.5,
            {
                "messaging.system": "kafka",
                "messaging.destination.name": "orders",
                "messaging.operation.type": "publish",
                "messaging.client.id": "checkout-producer",
                "server.address": "kafka-0.kafka",
                "server.port": 9092,
            },
        )

        # payment
        self.op_pay_charge = server(pay, "POST", "/payments/charge", 3.0)
        self.op_pay_gateway = _Op(
            "payment->gateway",
            pay,
            "POST",
            "CLIENT",
            120.0,
            0.4,
            {"http.request.method": "POST", "server.address": "api.paygate.example", "server.port": 443},
            timeout_ms=None,
        )
        self.op_pay_fraud = internal(pay, "fraud.score", 4.0, 0.5, {"app.fraud.model": "gbdt-2024-05"})
        self.op_pay_insert = db(pay, "postgresql", "payments", "INSERT", "charges", 3.0)
        self.pay_exc = (
            "com.shop.payment.GatewayException",
            "payment gateway returned 503 Service Unavailable",
            "com.shop.payment.GatewayException: payment gateway returned 503\n"
            "\tat com.shop.payment.PayGateClient.charge(PayGateClient.java:84)\n"
            "\tat com.shop.payment.ChargeController.charge(ChargeController.java:51)",
        )

        # email-worker
        self.op_email_process = _Op(
            "email-worker:process orders",
            email,
            "process orders",
            "CONSUMER",
            1.0,
            0.4,
            {
                "messaging.system": "kafka",
                "messaging.destination.name": "orders",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": "email-worker",
                "server.address": "kafka-1.kafka",
                "server.port": 9092,
            },
        )
        self.op_email_select = db(email, "postgresql", "customers", "SELECT", "customers", 1.5)
        self.op_email_render = internal(
            email, "render order-confirmation", 5.0, 0.4, {"app.template": "order-confirmation.mjml"}
        )
        self.op_email_smtp = _Op(
            "email-worker:smtp",
            email,
            "smtp send",
            "CLIENT",
            80.0,
            0.5,
            {"server.address": "smtp.mailer.example", "server.port": 587, "network.protocol.name": "smtp"},
            (
                "jakarta.mail.MessagingException",
                "421 4.7.0 Try again later, closing connection. (EHLO)",
                "jakarta.mail.MessagingException: 421 4.7.0 Try again later\n"
                "\tat org.eclipse.angus.mail.smtp.SMTPTransport.issueCommand(SMTPTransport.java:2412)"
                "\n\tat com.shop.email.Mailer.send(Mailer.java:66)",
            ),
        )

    # ---- primitives -----------------------------------------------------------------------

    def _id(self) -> bytes:
        return (self._bits(64) or 1).to_bytes(8, "big")

    def _lat(self, op: _Op) -> int:
        """A log-normal latency of ``op`` in ns."""
        d = self._exp(op.mu + op.sigma * _NORMAL_TABLE[int(self._random() * _NORMAL_SIZE)])
        if op is self._slow_op:  # 10-50x slower, and at least 10-50 ms, at most SLOW_OP_MAX_MS
            d = min(max(d * self._slow_mult, self._slow_mult * 1e6), _SLOW_OP_MAX_NS)
            self._slow_op = None
        return int(d)

    def _fail(self, op: _Op) -> bool:
        if op is self._err_op:
            self._err_op = None
            return True
        return False

    def _emit(self, op, rep, sid, parent, start, end, status, attrs, msg="", events=None, links=None):
        """Record a span; ``attrs`` is its complete attribute map."""
        detail = _encode_detail(
            {"status_message": msg, "attributes": attrs, "events": events or [], "links": links or []}
        )
        # The exporter of the span's replica flushes at the next tick of its timer after the
        # span ends; sorting these tuples groups spans into batches, in end order.
        svc = op.svc
        interval, phase = svc.flush_ns, rep.phase_ns
        spans = self._spans
        spans.append(
            (
                ((end + phase) // interval + 1) * interval - phase,
                svc.index,
                rep.index,
                end,
                start,
                len(spans),
                op,
                rep,
                sid,
                parent,
                status,
                detail,
                self._redelivery,
            )
        )

    def _error_span_parts(self, op, t, escaped=False, exc=None):
        """(status message, events) of a failed span."""
        exc = exc or op.exc
        return exc[1], [_exception_event(t, exc, escaped)]

    # leaf spans -----------------------------------------------------------------------------

    def _db(self, op, rep, parent, t, statement: str, rows: int = -1):
        """A database client span; returns (end, failed)."""
        sid = self._id()
        if op.exc is not None and self._fail(op):
            end = t + (op.timeout_ns or self._lat(op))
            msg, ev = self._error_span_parts(op, end)
            self._emit(
                op,
                rep,
                sid,
                parent,
                t,
                end,
                ERROR,
                {**op.static_attrs, "db.statement": statement, "error.type": op.exc[0]},
                msg,
                ev,
            )
            return end, True
        end = t + self._lat(op)
        if rows >= 0:
            self._emit(
                op,
                rep,
                sid,
                parent,
                t,
                end,
                UNSET,
                {**op.static_attrs, "db.statement": statement, "db.response.returned_rows": rows},
            )
        else:
            self._emit(op, rep, sid, parent, t, end, UNSET, {**op.static_attrs, "db.statement": statement})
        return end, False

    def _internal(self, op, rep, parent, t):
        sid = self._id()
        if op.exc is not None and self._fail(op):
            end = t + self._lat(op) // 3
            msg, ev = self._error_span_parts(op, end)
            self._emit(op, rep, sid, parent, t, end, ERROR, op.static_attrs, msg, ev)
            return end, True
        end = t + self._lat(op)
        self._emit(op, rep, sid, parent, t, end, UNSET, op.static_attrs)
        return end, False

    def _external(self, op, rep, parent, t, url: str, host: str = ""):
        """An HTTP client span to a host outside the mesh (no server span); (end, code).
        ``host``: server.address when the operation's static attributes do not name it."""
        sid = self._id()
        attrs = {**op.static_attrs, "url.full": url}
        if host:
            attrs["server.address"] = host
        if self._fail(op):
            if op.timeout_ns:
                end = t + op.timeout_ns
                msg, ev = self._error_span_parts(op, end)
                attrs["error.type"] = op.exc[0]
                self._emit(op, rep, sid, parent, t, end, ERROR, attrs, msg, ev)
                return end, 504
            end = t + self._lat(op) // 4
            attrs["http.response.status_code"] = 503
            attrs["error.type"] = "503"
            self._emit(op, rep, sid, parent, t, end, ERROR, attrs)
            return end, 503
        end = t + self._lat(op)
        attrs["http.response.status_code"] = 200
        self._emit(op, rep, sid, parent, t, end, UNSET, attrs)
        return end, 200

    def _rpc(self, cop, crep, parent, t, sop, path, query, body, arg, extra=None):
        """A client span on the caller and the server span on a callee replica; the callee's
        work is ``body(server_span_id, server_start, replica, arg) -> (end, code, exc)``.
        ``extra``: more server span attributes (a dict). Returns (client end, code)."""
        svc = sop.svc
        srep = svc.replicas[int(self._random() * svc.n)]
        cid = self._id()
        sid = self._id()
        net = self.op_net
        ts = t + self._lat(net)
        end_srv, code, exc = body(sid, ts, srep, arg)
        url = svc.base_url + path + ("?" + query if query else "")
        sattrs = {**sop.static_attrs, "url.path": path}
        if query:
            sattrs["url.query"] = query
        sattrs["url.full"] = url
        sattrs["client.address"] = crep.ip
        sattrs["http.response.status_code"] = code
        cattrs = {**cop.static_attrs, "url.full": url, "net.peer.ip": srep.ip, "http.response.status_code": code}
        if code >= 500:
            sattrs["error.type"] = cattrs["error.type"] = str(code)
            if extra:
                sattrs.update(extra)
            msg, ev = self._error_span_parts(sop, end_srv, True, exc) if exc else ("", None)
            self._emit(sop, srep, sid, cid, ts, end_srv, ERROR, sattrs, msg, ev)
            end = end_srv + self._lat(net)
            self._emit(cop, crep, cid, parent, t, end, ERROR, cattrs)
            return end, code
        if extra:
            sattrs.update(extra)
        self._emit(sop, srep, sid, cid, ts, end_srv, UNSET, sattrs)
        end = end_srv + self._lat(net)
        self._emit(cop, crep, cid, parent, t, end, UNSET, cattrs)
        return end, code

    # ---- per-trace request data ----------------------------------------------------------------

    def _ctx(self, start_ns: int) -> _Ctx:
        rnd, bits = self._random, self._bits
        c = _Ctx()
        uid = f"u-{10000 + int(rnd() * 90000)}"
        first = _FIRST[int(rnd() * len(_FIRST))]
        last = _LAST[int(rnd() * len(_LAST))]
        email = f"{first}.{last}{int(rnd() * 100)}@{_DOMAINS[int(rnd() * len(_DOMAINS))]}"
        ip = (
            f"{_PUBLIC_FIRST_OCTET[int(rnd() * len(_PUBLIC_FIRST_OCTET))]}."
            f"{int(rnd() * 256)}.{int(rnd() * 256)}.{1 + int(rnd() * 253)}"
        )
        c.ua = _UAS[int(rnd() * len(_UAS))]
        c.session = f"{bits(64):016x}"
        c.order_id = f"ord-{1000000 + int(rnd() * 9000000)}"
        n_items = 1 + int(rnd() * rnd() * 4)  # 1..4, mostly 1-2
        skus = self._skus
        c.skus = [skus[int(rnd() * len(skus))] for _ in range(n_items)]
        c.qtys = [1 + int(rnd() * rnd() * 3) for _ in range(n_items)]
        c.total_cents = sum(self._prices[s] * q for s, q in zip(c.skus, c.qtys))
        c.zip = f"{10000 + int(rnd() * 89999)}"
        prefix = "4" if rnd() < 0.6 else str(51 + int(rnd() * 5))  # Visa or Mastercard
        k = 15 - len(prefix)
        body = prefix + str(int(rnd() * 10**k)).zfill(k)
        card = body + _luhn_check_digit(body)
        c.card_fmt = " ".join(card[i : i + 4] for i in range(0, 16, 4)) if rnd() < 0.5 else card
        c.leak_card = rnd() < 0.1
        for key, value in self._canaries.items():
            lk = key.lower()
            if lk in _KEY_EMAIL:
                email = value
            elif lk in _KEY_USER:
                uid = value
            elif lk in _KEY_IP:
                ip = value
            elif "card" in lk:
                c.card_fmt = value
                c.leak_card = True
        c.user_id, c.email, c.ip, c.card = uid, email, ip, card
        iat = start_ns // 1_000_000_000 - int(rnd() * 3000)
        payload = json.dumps(
            {"sub": uid, "email": email, "iat": iat, "exp": iat + 3600, "iss": "https://auth.shop.example"},
            separators=(",", ":"),
        )
        c.jwt = f"{_JWT_HEADER}.{_b64(payload.encode())}.{_b64(bits(256).to_bytes(32, 'big'))}"
        return c

    def _root_attrs(self, op, ctx, path, query, code) -> dict:
        """The root span's attributes; canaries go last and replace a same-named attribute."""
        attrs = {**op.static_attrs}
        attrs["url.path"] = path
        attrs["url.full"] = "https://shop.example.com" + path + ("?" + query if query else "")
        attrs["client.address"] = ctx.ip
        attrs["user_agent.original"] = ctx.ua
        attrs["enduser.id"] = ctx.user_id
        attrs["session.id"] = ctx.session
        attrs["http.request.header.authorization"] = ["Bearer " + ctx.jwt]
        attrs["http.response.status_code"] = code
        canaries = self._canaries
        if canaries:
            for key in canaries:
                attrs.pop(key, None)
            attrs.update(canaries)
        if query and "url.query" not in attrs:
            attrs["url.query"] = query
        if code >= 500 and "error.type" not in attrs:
            attrs["error.type"] = str(code)
        return attrs

    def _root_http(self, op, t0, ctx, path, query, body):
        fe = op.svc
        rep = fe.replicas[int(self._random() * fe.n)]
        rid = self._id()
        end, code = body(rid, t0 + self._lat(self.op_mw), rep, ctx)
        end += self._lat(self.op_mw_small)
        status = ERROR if code >= 500 else UNSET
        self._emit(op, rep, rid, None, t0, end, status, self._root_attrs(op, ctx, path, query, code))

    # ---- flows -------------------------------------------------------------------------------

    def _flow_product(self, t0, ctx):
        sku = ctx.skus[0]
        self._root_http(
            self.op_fe_product, t0, ctx, "/product/" + sku, "ref=home" if self._random() < 0.3 else "", self._fe_product
        )

    def _fe_product(self, rid, t, rep, ctx):
        sku, uid = ctx.skus[0], ctx.user_id
        stag = self.op_stagger
        e1, c1 = self._rpc(
            self.op_fe_inv_c,
            rep,
            rid,
            t,
            self.op_inv_product,
            "/products/" + sku,
            "fields=price,stock,images",
            self._inv_product,
            sku,
        )
        t += self._lat(stag)
        e2, _ = self._rpc(
            self.op_fe_cart_c,
            rep,
            rid,
            t,
            self.op_cart_get,
            "/cart/" + uid,
            "",
            self._cart_get,
            uid,
            {"enduser.id": uid},
        )
        t += self._lat(stag)
        e3, _ = self._rpc(
            self.op_fe_rec_c,
            rep,
            rid,
            t,
            self.op_rec_get,
            "/recommendations",
            f"product_id={sku}&user_id={uid}&limit=4",
            self._rec_get,
            sku,
        )
        t += self._lat(stag)
        e4, _ = self._rpc(
            self.op_fe_ship_c,
            rep,
            rid,
            t,
            self.op_ship_est,
            "/shipping/estimate",
            f"sku={sku}&zip={ctx.zip}",
            self._ship_estimate,
            ctx,
        )
        end = max(e1, e2, e3, e4)
        if c1 >= 500:  # no product: error page (cart, recommendations, shipping degrade)
            return end + self._lat(self.op_mw_small), 502
        end, _ = self._internal(self.op_fe_render, rep, rid, end)
        return end, 200

    def _flow_cart(self, t0, ctx):
        self._root_http(self.op_fe_cart_add, t0, ctx, "/api/cart/items", "", self._fe_cart_add)

    def _fe_cart_add(self, rid, t, rep, ctx):
        uid = ctx.user_id
        e1, c1 = self._rpc(
            self.op_fe_cart_add_c, rep, rid, t, self.op_cart_add, f"/cart/{uid}/items", "", self._cart_add, ctx
        )
        t += self._lat(self.op_stagger)
        e2, _ = self._rpc(
            self.op_fe_rec_c,
            rep,
            rid,
            t,
            self.op_rec_get,
            "/recommendations",
            f"context=cart&user_id={uid}&limit=4",
            self._rec_get,
            ctx.skus[0],
        )
        end = max(e1, e2)
        return end, (502 if c1 >= 500 else 201)

    def _flow_checkout(self, t0, ctx):
        self._root_http(self.op_fe_checkout, t0, ctx, "/api/checkout", "", self._fe_checkout)

    def _fe_checkout(self, rid, t, rep, ctx):
        end, code = self._rpc(
            self.op_fe_co_c,
            rep,
            rid,
            t,
            self.op_co_checkout,
            "/checkout",
            f"user_id={ctx.user_id}&currency=USD",
            self._co_checkout,
            ctx,
            {"user.id": ctx.user_id, "user.email": ctx.email},
        )
        return end, (502 if code >= 500 else 200)

    def _flow_rate_sync(self, t0, ctx):
        op = self.op_ship_sync
        svc = op.svc
        rep = svc.replicas[int(self._random() * svc.n)]
        rid = self._id()
        rnd = self._random
        n = 2 + int(rnd() * 3)
        start = int(rnd() * len(_CARRIERS))
        t = t0 + self._lat(self.op_mw)
        failed = 0
        key = f"ak_live_{self._bits(96):024x}"
        for i in range(n):
            carrier = _CARRIERS[(start + i) % len(_CARRIERS)]
            zone = 1 + int(rnd() * 9)
            t, code = self._external(
                self.op_ship_carrier,
                rep,
                rid,
                t,
                f"https://api.{carrier}.example/v2/rates?origin=DE-10115&zone={zone}&api_key={key}",
                f"api.{carrier}.example",
            )
            if code >= 500:
                failed += 1
                continue
            t, _ = self._db(
                self.op_ship_replace,
                rep,
                rid,
                t,
                f"REPLACE INTO rates (carrier, zone, weight_g, price_cents) VALUES "
                f"('{carrier}', {zone}, {500 * (1 + int(rnd() * 10))}, "
                f"{300 + int(rnd() * 2500)})",
            )
        end = t + self._lat(self.op_mw_small)
        attrs = {**op.static_attrs}
        attrs["app.job.run_id"] = f"{self._bits(32):08x}"
        attrs["app.carriers.count"] = n
        attrs.update(self._canaries)
        if failed:
            self._emit(op, rep, rid, None, t0, end, ERROR, attrs, f"{failed} of {n} carriers failed")
        else:
            self._emit(op, rep, rid, None, t0, end, UNSET, attrs)

    # ---- service handlers (bodies) ----------------------------------------------------------

    def _inv_product(self, sid, t, rep, sku):
        t += self._lat(self.op_mw_small)
        e, failed = self._db(self.op_inv_redis_get, rep, sid, t, f"GET product:{sku}")
        if failed:
            return e + self._lat(self.op_mw_small), 500, None
        if self._random() < 0.3:  # cache miss
            e, _ = self._db(
                self.op_inv_select,
                rep,
                sid,
                e,
                f"SELECT sku, name, price_cents, stock, image_url FROM products WHERE sku = '{sku}'",
                1,
            )
            e, _ = self._db(self.op_inv_redis_set, rep, sid, e, f"SET product:{sku} ? EX 300")
        return e + self._lat(self.op_mw_small), 200, None

    def _inv_batch(self, sid, t, rep, skus):
        t += self._lat(self.op_mw_small)
        ids = "', '".join(skus)
        e, _ = self._db(
            self.op_inv_select_batch,
            rep,
            sid,
            t,
            f"SELECT sku, name, price_cents FROM products WHERE sku IN ('{ids}')",
            len(skus),
        )
        return e + self._lat(self.op_mw_small), 200, None

    def _inv_reserve(self, sid, t, rep, ctx):
        e = t + self._lat(self.op_mw_small)
        for i, (sku, qty) in enumerate(zip(ctx.skus, ctx.qtys)):
            e, failed = self._db(
                self.op_inv_update,
                rep,
                sid,
                e,
                f"UPDATE stock SET reserved = reserved + {qty} WHERE sku = "
                f"'{sku}' AND warehouse_id = {1 + i % 3} AND "
                f"stock - reserved >= {qty}",
            )
            if failed:
                return e + self._lat(self.op_mw_small), 500, None
        return e + self._lat(self.op_mw_small), 200, None

    def _cart_get(self, sid, t, rep, uid):
        t += self._lat(self.op_mw_small)
        e, failed = self._db(self.op_cart_hgetall, rep, sid, t, f"HGETALL cart:{uid}")
        return e + self._lat(self.op_mw_small), (500 if failed else 200), None

    def _cart_add(self, sid, t, rep, ctx):
        t += self._lat(self.op_mw_small)
        sku = ctx.skus[0]
        e, code = self._rpc(
            self.op_cart_inv_c,
            rep,
            sid,
            t,
            self.op_inv_product,
            "/products/" + sku,
            "fields=stock",
            self._inv_product,
            sku,
        )
        if code >= 500:
            return e + self._lat(self.op_mw_small), 503, None
        e, failed = self._db(self.op_cart_hset, rep, sid, e, f"HSET cart:{ctx.user_id} {sku} {ctx.qtys[0]}")
        if failed:
            return e + self._lat(self.op_mw_small), 500, None
        e, _ = self._db(self.op_cart_expire, rep, sid, e, f"EXPIRE cart:{ctx.user_id} 86400")
        return e + self._lat(self.op_mw_small), 201, None

    def _cart_del(self, sid, t, rep, uid):
        t += self._lat(self.op_mw_small)
        e, _ = self._db(self.op_cart_delcmd, rep, sid, t, f"DEL cart:{uid}")
        return e + self._lat(self.op_mw_small), 204, None

    def _rec_get(self, sid, t, rep, sku):
        t += self._lat(self.op_mw_small)
        e, failed = self._internal(self.op_rec_predict, rep, sid, t)
        if failed:
            return e + self._lat(self.op_mw_small), 500, self.op_rec_predict.exc
        rnd, skus = self._random, self._skus
        picks = [skus[int(rnd() * len(skus))] for _ in range(4)]
        e, _ = self._rpc(
            self.op_rec_inv_c,
            rep,
            sid,
            e,
            self.op_inv_batch,
            "/products",
            "ids=" + ",".join(picks),
            self._inv_batch,
            picks,
        )
        return e + self._lat(self.op_mw_small), 200, None

    def _ship_estimate(self, sid, t, rep, ctx):
        t += self._lat(self.op_mw_small)
        e, failed = self._db(self.op_ship_select, rep, sid, t, self._rates_sql(ctx))
        return e + self._lat(self.op_mw_small), (500 if failed else 200), None

    def _rates_sql(self, ctx):
        return (
            f"SELECT carrier, price_cents, eta_days FROM rates WHERE zone = "
            f"{1 + int(ctx.zip) % 9} AND weight_g >= {sum(ctx.qtys) * 450} "
            "ORDER BY price_cents LIMIT 3"
        )

    def _ship_quote(self, sid, t, rep, ctx):
        t += self._lat(self.op_mw_small)
        e, failed = self._db(self.op_ship_select, rep, sid, t, self._rates_sql(ctx), 3)
        return e + self._lat(self.op_mw_small), (500 if failed else 200), None

    def _pay_charge(self, sid, t, rep, ctx):
        t += self._lat(self.op_mw_small)
        e, _ = self._internal(self.op_pay_fraud, rep, sid, t)
        e, code = self._external(
            self.op_pay_gateway,
            rep,
            sid,
            e,
            f"https://api.paygate.example/v1/charges?order={ctx.order_id}&amount={ctx.total_cents}&currency=USD",
        )
        if code >= 500:
            return e + self._lat(self.op_mw_small), 502, self.pay_exc
        card = ctx.card
        e, _ = self._db(
            self.op_pay_insert,
            rep,
            sid,
            e,
            "INSERT INTO charges (order_id, user_id, amount_cents, card_last4, status)"
            f" VALUES ('{ctx.order_id}', '{ctx.user_id}', {ctx.total_cents}, "
            f"'{card[-4:]}', 'captured')",
        )
        return e + self._lat(self.op_mw_small), 201, None

    def _co_checkout(self, sid, t, rep, ctx):
        lat, small = self._lat, self.op_mw_small
        t += lat(small)
        uid = ctx.user_id
        e, code = self._rpc(self.op_co_cart_c, rep, sid, t, self.op_cart_get, "/cart/" + uid, "", self._cart_get, uid)
        if code >= 500:
            return e + lat(small), 500, None
        # reserve stock and quote shipping in parallel
        e1, c1 = self._rpc(
            self.op_co_inv_c,
            rep,
            sid,
            e,
            self.op_inv_reserve,
            "/inventory/reserve",
            f"order_id={ctx.order_id}",
            self._inv_reserve,
            ctx,
        )
        e2, _ = self._rpc(
            self.op_co_ship_c,
            rep,
            sid,
            e + lat(self.op_stagger),
            self.op_ship_quote,
            "/shipping/quote",
            f"zip={ctx.zip}&items={len(ctx.skus)}",
            self._ship_quote,
            ctx,
        )
        e = max(e1, e2)  # a failed quote falls back to the flat rate
        if c1 >= 500:
            return e + lat(small), 500, None
        pay_q = f"order_id={ctx.order_id}&amount_cents={ctx.total_cents}&currency=USD"
        pay_attrs = {"enduser.id": uid, "payment.card.last4": ctx.card[-4:]}
        if ctx.leak_card:  # a debug attribute someone forgot to remove
            pay_attrs["payment.card.number"] = ctx.card_fmt
        e, code = self._rpc(
            self.op_co_pay_c,
            rep,
            sid,
            e + lat(small),
            self.op_pay_charge,
            "/payments/charge",
            pay_q,
            self._pay_charge,
            ctx,
            pay_attrs,
        )
        if code >= 500 and self._random() < 0.5:  # one retry after a backoff
            e, code = self._rpc(
                self.op_co_pay_c,
                rep,
                sid,
                e + lat(self.op_backoff),
                self.op_pay_charge,
                "/payments/charge",
                pay_q,
                self._pay_charge,
                ctx,
                pay_attrs,
            )
        if code >= 500:
            return e + lat(small), 502, None
        e, failed = self._db(
            self.op_co_insert,
            rep,
            sid,
            e,
            "INSERT INTO orders (id, user_id, email, total_cents, currency, "
            f"ship_zip) VALUES ('{ctx.order_id}', '{uid}', '{ctx.email}', "
            f"{ctx.total_cents}, 'USD', '{ctx.zip}')",
        )
        if failed:
            return e + lat(small), 500, self.op_co_insert.exc
        # publish the order, consumed later by email-worker
        op = self.op_co_publish
        pid = self._id()
        pe = e + lat(op)
        partition = str(int(self._random() * 12))
        self._emit(
            op,
            rep,
            pid,
            sid,
            e,
            pe,
            UNSET,
            {**op.static_attrs, "messaging.message.id": ctx.order_id, "messaging.destination.partition.id": partition},
        )
        self._consume(pid, pe, ctx, partition)
        e, _ = self._rpc(self.op_co_cart_del_c, rep, sid, pe, self.op_cart_del, "/cart/" + uid, "", self._cart_del, uid)
        return e + lat(small), 200, None

    def _consume(self, producer_id, published, ctx, partition):
        op = self.op_email_process
        svc = op.svc
        rnd = self._random
        wait = min(-self._queue_mean_ns * math.log(1.0 - rnd()), self._queue_max_ns)
        delay = int(wait) + 1_000_000 + self._lat(self.op_net)
        t = published + delay
        retry = 0
        if rnd() < REBALANCE_REDELIVERY_RATE:  # the first attempt died in a rebalance before exporting its span
            retry = 1
            t += int(3e9 + rnd() * 7e9)
        links = [
            {
                "trace_id": self._tid,
                "span_id": producer_id,
                "trace_state": self._trace_state,
                "attributes": {"messaging.message.id": ctx.order_id},
            }
        ]
        while True:
            self._redelivery = retry > 0  # a redelivered attempt's spans are late on purpose
            rep = svc.replicas[int(rnd() * svc.n)]
            cid = self._id()
            e = t + self._lat(self.op_mw_small)
            e, _ = self._db(
                self.op_email_select,
                rep,
                cid,
                e,
                f"SELECT first_name, email, locale FROM customers WHERE id = '{ctx.user_id}'",
                1,
            )
            e, _ = self._internal(self.op_email_render, rep, cid, e)
            smtp = self.op_email_smtp
            s_id = self._id()
            attrs = {**smtp.static_attrs, "user.email": ctx.email}
            if self._fail(smtp):
                se = e + self._lat(smtp) // 5
                msg, ev = self._error_span_parts(smtp, se)
                attrs["error.type"] = smtp.exc[0]
                self._emit(smtp, rep, s_id, cid, e, se, ERROR, attrs, msg, ev)
                failed = True
            else:
                se = e + self._lat(smtp)
                self._emit(smtp, rep, s_id, cid, e, se, UNSET, attrs)
                failed = False
            end = se + self._lat(self.op_mw_small)
            attrs = {
                **op.static_attrs,
                "messaging.message.id": ctx.order_id,
                "messaging.destination.partition.id": partition,
            }
            if retry:
                attrs["messaging.retry.count"] = retry
            if failed:
                msg, ev = self._error_span_parts(smtp, end, True)
                self._emit(op, rep, cid, producer_id, t, end, ERROR, attrs, msg, ev, links)
                retry += 1
                t = end + int(1e9 * (1 + 4 * rnd()))  # redelivered after the retry backoff
                continue
            self._emit(op, rep, cid, producer_id, t, end, UNSET, attrs, links=links)
            self._redelivery = False
            return

    # ---- the trace ---------------------------------------------------------------------------

    def trace(self, start_ns: int) -> GeneratedTrace:
        rnd = self._random
        self._tid = tid = (self._bits(128) or 1).to_bytes(16, "big")
        self._spans = spans = []
        r = rnd()
        flow = self._flows[-1]
        for acc, f in self._flow_cdf:
            if r < acc:
                flow = f
                break
        injected = rnd() < self._error_rate
        self._err_op = flow.err_ops[int(rnd() * len(flow.err_ops))] if injected else None
        slow = rnd() < self._slow_rate
        if slow:
            self._slow_op = flow.slow_ops[int(rnd() * len(flow.slow_ops))]
            self._slow_mult = 10.0 + 40.0 * rnd()
        else:
            self._slow_op = None
        trace_state = f"shop=s:{self._bits(24):06x}" if rnd() < 0.1 else ""
        self._trace_state = trace_state
        ctx = self._ctx(start_ns)
        flow.run(start_ns, ctx)
        if self._err_op is not None:  # pragma: no cover
            raise AssertionError(f"flow {flow.name} did not run its injected error")
        # a slow target after an injected error may not have run: then the trace is not slow
        slow = slow and self._slow_op is None
        return self._assemble(tid, spans, flow, trace_state, slow)

    def _assemble(self, tid, spans, flow, trace_state, slow) -> GeneratedTrace:
        spans.sort()  # by (flush time, service, replica, end, start, emit order)
        by_svc: dict[str, int] = {}
        err_by_svc: dict[str, int] = {}
        min_start = spans[0][4]
        max_end = 0
        root_service = ""
        batches, export = [], []
        status_names = _STATUS_NAMES
        cur = None
        span_dicts: list = []
        late: list[bool] = []  # per batch: only spans of redelivered attempts
        for flush, si, ri, end, start, _, op, rep, sid, parent, status, detail, redelivery in spans:
            svc = op.svc
            if (flush, si, ri) != cur:
                cur = (flush, si, ri)
                span_dicts = []
                late.append(True)
                batches.append(
                    {
                        "trace_id": tid,
                        "service": svc.name,
                        "spans": span_dicts,
                        "resource": rep.resource_bytes,
                        "scope_name": svc.scope,
                    }
                )
                export.append(flush)
            span_dicts.append(
                {
                    "span_id": sid,
                    "parent_span_id": parent,
                    "name": op.name,
                    "kind": op.kind,
                    "start_time_unix_nano": start,
                    "end_time_unix_nano": end,
                    "status_code": status_names[status],
                    "trace_state": trace_state,
                    "detail": detail,
                }
            )
            if not redelivery:
                late[-1] = False
            by_svc[svc.name] = by_svc.get(svc.name, 0) + 1
            if parent is None:
                root_service = svc.name
            if status == ERROR:
                err_by_svc[svc.name] = err_by_svc.get(svc.name, 0) + 1
            if start < min_start:
                min_start = start
            if end > max_end:
                max_end = end
        return GeneratedTrace(
            trace_id=tid,
            batches=batches,
            span_count=len(spans),
            has_error=bool(err_by_svc),
            is_slow=slow,
            duration_ns=max_end - min_start,
            spans_by_service=by_svc,
            errors_by_service=err_by_svc,
            root_service=root_service,
            encoded=[_encode_batch(b) for b in batches],
            export_ns=export,
            flow=flow.name,
            late=late,
        )
