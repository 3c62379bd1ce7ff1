"""Sizes of each scenario: ``short`` runs inside ``make test`` (tests/integration/test_chaos_short.py),
``full`` is ``make chaos``. Rates are traces/s of the generator (about 19 spans a trace)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # crash storm
    storm_traces: int
    storm_rate: float
    storm_kill_every_s: float
    storm_kills: int
    storm_broker_restarts: int  # 1: SIGTERM once; 2: SIGTERM once and SIGKILL once
    storm_big_traces: int
    # zombie
    zombie_traces: int
    zombie_rate: float
    # fuzz (split over the two wire formats)
    fuzz_messages: int
    fuzz_traces: int
    fuzz_rate: float
    # overload
    overload_seconds: float
    overload_factor: float
    overload_buffer_bytes: int
    # canaries
    canary_traces: int
    drain_timeout_s: float
    scenarios: tuple[str, ...]  # run by default (--scenario picks others)


SHORT = Profile(
    name="short",
    storm_traces=5_300,  # ~100K spans
    storm_rate=180,
    storm_kill_every_s=8,
    storm_kills=2,
    storm_broker_restarts=1,  # SIGTERM and start again
    storm_big_traces=1,
    zombie_traces=1_200,
    zombie_rate=150,
    fuzz_messages=1_000,
    fuzz_traces=600,
    fuzz_rate=150,
    overload_seconds=12,
    overload_factor=3.0,
    overload_buffer_bytes=2_000_000,
    canary_traces=150,
    drain_timeout_s=180,
    # zombie and overload are in `make chaos`; make test has tests/integration/test_data_plane.py's zombie
    scenarios=("crash", "fuzz", "canaries"),
)

FULL = Profile(
    name="full",
    storm_traces=53_000,  # ~1M spans
    storm_rate=180,
    storm_kill_every_s=10,
    storm_kills=20,
    storm_broker_restarts=2,
    storm_big_traces=2,
    zombie_traces=6_000,
    zombie_rate=200,
    fuzz_messages=10_000,
    fuzz_traces=4_000,
    fuzz_rate=200,
    overload_seconds=60,
    overload_factor=3.0,
    overload_buffer_bytes=4_000_000,
    canary_traces=1_000,
    drain_timeout_s=600,
    scenarios=("crash", "zombie", "fuzz", "overload", "canaries"),
)

PROFILES = {p.name: p for p in (SHORT, FULL)}
