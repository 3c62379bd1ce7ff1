"""Shared pytest fixtures for tailsift's tests."""

from __future__ import annotations

# =============================================================================================
# Local Kafka broker (owned by deploy/local/kafka)
#
#   kafka_bootstrap  (session)  "host:port" of a broker that answers. KAFKA_BOOTSTRAP_SERVERS if
#                               set (checked: the test FAILS if it does not answer); otherwise a
#                               dedicated broker started lazily, on the first request, with
#                               `deploy/local/kafka start --port 0 --dir <state>/test-<pid>`, and
#                               stopped and deleted at session end. Unit tests that do not request
#                               it never need Java.
#   local_kafka      (session)  the same broker as a LocalKafka (bootstrap, instance_dir, cli()).
#   unique_name      (function) a short random suffix for topic / group / transactional ids.
#   secure_kafka     (session)  a second, own broker with a SASL_SSL + SCRAM-SHA-512 listener
#                               (`start --secure --port 0 --dir <state>/test-secure-<pid>`), started
#                               lazily like kafka_bootstrap; see README "Security".
#
# A broker that cannot be started is a test failure (pytest.fail with the log tail), never a skip.
# Set TAILSIFT_KEEP_KAFKA=1 to keep the test broker's directory (logs, data) after the session.
# =============================================================================================
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = _REPO_ROOT / "deploy" / "local" / "kafka"


def _kafka_state_dir() -> Path:
    return Path(os.environ.get("TAILSIFT_KAFKA_DIR") or _REPO_ROOT / ".kafka").resolve()


def _run_kafka_script(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    # Run with this interpreter so the script's readiness check can use confluent_kafka.
    return subprocess.run(
        [sys.executable, str(KAFKA_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env if env is not None else os.environ.copy(),
    )


@dataclass(frozen=True)
class LocalKafka:
    bootstrap: str
    # None when KAFKA_BOOTSTRAP_SERVERS points at an external cluster (nothing was started).
    instance_dir: Path | None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `deploy/local/kafka <args>` against this broker (adds --dir for our own broker)."""
        extra = ("--dir", str(self.instance_dir)) if self.instance_dir else ()
        return _run_kafka_script(*args, *extra, timeout=timeout)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_test_brokers(state: Path) -> None:
    """Stop and delete test-<pid> instances left by pytest sessions that died without teardown."""
    for old in state.glob("test-*"):
        try:
            owner = int(old.name.split("-", 1)[1])
        except ValueError:
            continue
        if owner == os.getpid() or _pid_alive(owner):
            continue
        _run_kafka_script("stop", "--dir", str(old), "--grace", "10", timeout=60)
        shutil.rmtree(old, ignore_errors=True)


# The test brokers' JVM compiles with C1 only (KAFKA_OPTS, unless set): a broker start — the session's,
# the secure one's and each restart a test does — took half as long (a formatted instance at load
# 12–14: 14–16 s against 28–30 s), and the tests' traffic is small enough that C2's peak speed buys
# nothing. Set in the environment, so brokers restarted by child processes (the chaos suite) get it.
TEST_BROKER_JVM_OPTS = "-XX:TieredStopAtLevel=1"


@pytest.fixture(scope="session", autouse=True)
def _test_broker_jvm_opts() -> Iterator[None]:
    had = "KAFKA_OPTS" in os.environ
    os.environ.setdefault("KAFKA_OPTS", TEST_BROKER_JVM_OPTS)
    yield
    if not had:
        os.environ.pop("KAFKA_OPTS", None)


@pytest.fixture(scope="session")
def local_kafka() -> Iterator[LocalKafka]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        # `start` with KAFKA_BOOTSTRAP_SERVERS set only checks that the cluster answers.
        proc = _run_kafka_script("start", "--timeout", "30", timeout=120)
        if proc.returncode != 0:
            pytest.fail(
                f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer:\n{proc.stdout}\n{proc.stderr}", pytrace=False
            )
        yield LocalKafka(bootstrap=external, instance_dir=None)
        return

    state = _kafka_state_dir()
    _remove_stale_test_brokers(state)
    inst = state / f"test-{os.getpid()}"
    env = os.environ.copy()
    env.pop("KAFKA_PORT", None)
    try:
        proc = _run_kafka_script("start", "--port", "0", "--dir", str(inst), env=env)
    except subprocess.TimeoutExpired as exc:
        _run_kafka_script("stop", "--dir", str(inst), timeout=60)
        pytest.fail(f"deploy/local/kafka start timed out after {exc.timeout}s (logs kept in {inst})", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"could not start the local Kafka broker (deploy/local/kafka start, exit "
            f"{proc.returncode}); logs kept in {inst}:\n{proc.stderr}\n{proc.stdout}",
            pytrace=False,
        )
    lines = proc.stdout.strip().splitlines()
    broker = LocalKafka(bootstrap=lines[-1].strip() if lines else "", instance_dir=inst)
    try:
        yield broker
    finally:
        stopped = broker.cli("stop", timeout=90)
        if stopped.returncode != 0:
            sys.stderr.write(f"deploy/local/kafka stop failed:\n{stopped.stderr}\n")
        if not os.environ.get("TAILSIFT_KEEP_KAFKA"):
            shutil.rmtree(inst, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka) -> str:
    return local_kafka.bootstrap


@pytest.fixture
def unique_name() -> str:
    return uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class SecureKafka:
    """A broker started with `deploy/local/kafka start --secure`: SASL_SSL + SCRAM-SHA-512."""

    bootstrap: str  # the SASL_SSL listener
    plaintext: str  # the same broker's PLAINTEXT listener
    instance_dir: Path

    def kafka_keys(self) -> dict:
        """The `kafka:` keys the launcher wrote for its SASL_SSL listener (password from a file)."""
        import yaml

        return yaml.safe_load((self.instance_dir / "secure" / "tailsift-kafka.yaml").read_text())["kafka"]

    def password(self) -> str:
        return (self.instance_dir / "secure" / "tailsift.password").read_text().strip()


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecureKafka]:
    """Its own broker (own dir and free ports), started on first request, once per session: the
    secure listener is a local one even when KAFKA_BOOTSTRAP_SERVERS names an external cluster."""
    state = _kafka_state_dir()
    for old in state.glob("test-secure-*"):  # left by sessions that died without teardown
        with_pid = old.name.rsplit("-", 1)[1]
        if with_pid.isdigit() and int(with_pid) != os.getpid() and not _pid_alive(int(with_pid)):
            _run_kafka_script("stop", "--dir", str(old), "--grace", "10", timeout=60)
            shutil.rmtree(old, ignore_errors=True)
    inst = state / f"test-secure-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_PORT", "KAFKA_BOOTSTRAP_SERVERS")}
    try:
        proc = _run_kafka_script("start", "--secure", "--port", "0", "--dir", str(inst), env=env)
    except subprocess.TimeoutExpired as exc:
        _run_kafka_script("stop", "--dir", str(inst), timeout=60, env=env)
        pytest.fail(f"deploy/local/kafka start --secure timed out after {exc.timeout}s (logs in {inst})", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        pytest.fail(
            f"could not start the secure local broker (exit {proc.returncode}); logs kept in {inst}:\n"
            f"{proc.stderr}\n{proc.stdout}",
            pytrace=False,
        )
    broker = SecureKafka(bootstrap=lines[-1].strip(), plaintext=lines[-2].strip(), instance_dir=inst)
    try:
        yield broker
    finally:
        _run_kafka_script("stop", "--dir", str(inst), timeout=90, env=env)
        if not os.environ.get("TAILSIFT_KEEP_KAFKA"):
            shutil.rmtree(inst, ignore_errors=True)


# ============================ end of local Kafka broker section ===============================


# =============================================================================================
# Token keys: privacy is on by default, so every job a test starts needs a key. A fixed test key
# (never a real one) unless the environment already names one.
# =============================================================================================

TEST_TOKEN_KEYS = "test1:" + "5a" * 32


@pytest.fixture(scope="session", autouse=True)
def _test_token_keys():
    had = "TAILSIFT_TOKEN_KEYS" in os.environ
    os.environ.setdefault("TAILSIFT_TOKEN_KEYS", TEST_TOKEN_KEYS)
    yield
    if not had:
        os.environ.pop("TAILSIFT_TOKEN_KEYS", None)


# =============================================================================================
# Two lanes under pytest-xdist (`make test`: -n 2 --dist loadgroup)
#
# The integration tests are in two xdist groups, each run in order on one worker against that
# worker's own session broker: "kafka", every test that restarts the broker or watches its consumer
# groups among them (they never meet another test's traffic), and "kafka-2", the modules below,
# which only read and write their own topics. xdist hands out the biggest groups first, one to each
# worker, and the unit tests to whichever worker is free: the second worker runs "kafka-2" (its
# broker started for it), then unit tests, while the first runs "kafka" and, if it finishes first,
# unit tests too. The integration tests mostly wait (on the broker, on the job's clocks and
# timeouts), the unit tests mostly compute. With one group the integration lane was the critical
# path (CI ~17 min of pytest's ~18; at load ~20 the unit lane ended after 25 min, the integration
# lane after 35). With KAFKA_BOOTSTRAP_SERVERS
# (one external cluster for both workers) every integration test is in "kafka" again. Without xdist
# the markers do nothing.
#
# A wrapper, so the marker is set before any plain hook runs: xdist reads it in its own
# pytest_collection_modifyitems (appending "@kafka" to the node ids its scheduler groups by), which
# ran first — the marker came too late and the integration tests were spread over both workers,
# each starting its own broker (and pytest 9 ignores xdist's node id change: pyproject pins <9).
# =============================================================================================
SECOND_KAFKA_LANE = {
    # the aggregation stage (Faust): its own topics and groups, ~5 min in CI
    "test_aggregate_e2e.py",
    "test_aggregate_backlog.py",
    # the demo in headless Chromium
    "test_html_report.py",
}


def _kafka_lane(item: pytest.Item) -> str:
    if item.path.name in SECOND_KAFKA_LANE and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return "kafka-2"
    return "kafka"


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.xdist_group(_kafka_lane(item)))
    return (yield)
