"""The counted ingest (``native/src/ingest.rs`` and ``avro_ingest.rs``, ``NativeCodec.ingest_counted``):
one call per batch that decodes, checks and places OTLP or Avro messages like ``decode_placed`` and
counts the spans of the
messages that stay in the native SLI windows itself — returning per trace fragment its trace ID,
span count, root and newest end instead of a header dict per span.

Against the references it replaces, for the same batches (generated requests, the peer
benchmark's multi-trace requests, hostile and random bytes, any placement, partition count and
record limit): the same verdicts and copies as ``decode_placed`` (itself held to the Python
reference by ``test_native_rekey.py``); fragments that are exactly what ``decode_placed``'s header
dicts say (trace ID, span count, any parent None, the newest end); and the SLI windows — counted
in the same call, with the same holds, replayed messages counted nowhere — emitting the Python
``operators.sli.SliWindows``' partials bin for bin, with the same obligations added per hold.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.sli import SliWindows
from pipeline.codecs import native
from pipeline.codecs.interface import Malformed, Rekeyed
from pipeline.job.records import Consumed, Received
from pipeline.job.sli import native_sli_windows
from pipeline.kafka.partitioner import COLLECTOR, TAILSIFT

if not native.AVAILABLE:
    pytest.skip("the native core is not built (no Rust toolchain)", allow_module_level=True)

from tests.unit.test_native_differential import (  # noqa: E402
    AVRO_MESSAGES,
    BOUNDS,
    GENERATED_AVRO,
    GENERATED_OTLP,
    NOW,
    OTLP_MESSAGES,
)
from tests.unit.test_native_rekey import PEER_UNKEYED, SETTINGS, received  # noqa: E402
from tests.unit.test_native_sli import assert_same_windows  # noqa: E402

S = 1_000_000_000
WINDOW_NS = 10 * S
PLACEMENTS = st.sampled_from([TAILSIFT, COLLECTOR])


class Hold:
    """A commit hold stand-in: only its identity matters to the windows."""


def assert_same_ingest(
    msgs: list[Received],
    placement,
    partitions: int,
    limit: int,
    replayed: set[int] = frozenset(),
    rekey: bool = True,
    now_ns: int = NOW,
    fmt: str = "otlp_proto",
) -> None:
    codec = native.NativeCodec(fmt, BOUNDS)
    holds = [Hold() for _ in msgs]
    sli_holds = [None if i in replayed else h for i, h in enumerate(holds)]
    windows = native_sli_windows(WINDOW_NS, 0)
    results, touched = codec.ingest_counted(
        Consumed.of(msgs), now_ns, windows, sli_holds, rekey, placement, partitions, limit, 16 * limit
    )
    assert len(results) == len(touched) == len(msgs)
    # the reference: decode_placed's fragments (header dicts), counted by the Python windows
    if rekey:
        ref = codec.decode_placed(msgs, now_ns, placement, partitions, limit, 16 * limit)
    else:
        ref = codec.decode_batch([m.value for m in msgs], now_ns)
    python = SliWindows(WINDOW_NS, 0)
    for i, (mine, want) in enumerate(zip(results, ref)):
        if isinstance(want, Malformed):
            assert mine == (want.reason, want.detail)
            assert touched[i] == 0
            continue
        if isinstance(want, Rekeyed) and want.parts is not None:
            assert type(mine) is tuple and mine[1] is None
            assert [tuple(p) for p in mine[0]] == [tuple(p) for p in want.parts]
            assert touched[i] == 0
            continue
        if isinstance(want, Rekeyed):  # too large to re-key: it stays, counted
            assert type(mine) is tuple and mine[0] is None
            mine, want = mine[1], want.fragments
        assert type(mine) is list
        expected = []
        n = 0
        for f in want:
            spans = f.spans()
            newest = max(s["end_time_unix_nano"] for s in spans)
            expected.append((f.trace_id, f.span_count, any(s["parent_span_id"] is None for s in spans), newest))
            if sli_holds[i] is not None:
                n += python.add_groups(msgs[i].partition, f.groups, holds[i])
        assert mine == expected
        # a message counts each window it touches once, over all its fragments
        assert touched[i] == len({id(w) for w in _holding(python, holds[i])}) == n
    assert_same_windows(python.due(0, flush_all=True), windows.due(0, flush_all=True), NOW)


def _holding(windows: SliWindows, hold) -> list:
    return [agg for cell in windows._open.values() for agg in cell.values() if any(h is hold for h in agg.holds)]


@SETTINGS
@given(st.lists(received(OTLP_MESSAGES), min_size=1, max_size=5), PLACEMENTS, st.sampled_from([0, 1, 6]))
def test_valid_hostile_and_random_messages_ingest_alike(msgs, placement, partitions):
    assert_same_ingest(msgs, placement, partitions, 1 << 20)


@SETTINGS
@given(
    st.lists(received(st.sampled_from(PEER_UNKEYED + GENERATED_OTLP)), min_size=1, max_size=8),
    PLACEMENTS,
    st.sampled_from([0, 6]),
    st.sampled_from([1 << 20, 2_000]),  # 2,000: some copies too large, their messages stay
    st.sets(st.integers(0, 7), max_size=3),
)
def test_multi_trace_requests_ingest_alike_and_replays_count_nowhere(msgs, placement, partitions, limit, replayed):
    assert_same_ingest(msgs, placement, partitions, limit, replayed)


@SETTINGS
@given(st.lists(received(st.sampled_from(PEER_UNKEYED + GENERATED_OTLP)), min_size=1, max_size=8))
def test_without_rekeying_every_accepted_message_stays(msgs):
    assert_same_ingest(msgs, TAILSIFT, 6, 1 << 20, rekey=False)


@pytest.mark.parametrize("placement", [TAILSIFT, COLLECTOR])
def test_the_chaos_suites_hostile_messages_ingest_alike(placement):
    from pipeline.chaos import fuzz

    msgs = [Received(i % 6, i, h.key, h.value) for i, h in enumerate(fuzz.messages(300, "otlp_proto", seed=23))]
    now_ns = time.time_ns()  # the chaos messages are timed from the clock
    for i in range(0, len(msgs), 50):
        assert_same_ingest(msgs[i : i + 50], placement, 6, 1 << 20, now_ns=now_ns)


@SETTINGS
@given(
    st.lists(received(AVRO_MESSAGES, "avro"), min_size=1, max_size=6),
    PLACEMENTS,
    st.sampled_from([0, 1, 6]),
    st.sampled_from([1 << 20, 300]),  # 300: some misplaced messages too large to move, they stay
    st.sets(st.integers(0, 5), max_size=2),
    st.booleans(),
)
def test_avro_messages_ingest_alike(msgs, placement, partitions, limit, replayed, rekey):
    """Avro counted in the decode call (issue 17): ``Job.ingest`` built a ``Fragment`` with a header
    dict per span for each ~3-span message and counted it with ``add_groups``; the counted call
    must give the same verdicts, copies, fragment facts and windows."""
    assert_same_ingest(msgs, placement, partitions, limit, replayed, rekey, fmt="avro")


@SETTINGS
@given(st.lists(received(st.sampled_from(GENERATED_AVRO), "avro"), min_size=1, max_size=8), PLACEMENTS)
def test_generated_avro_ingests_alike(msgs, placement):
    assert_same_ingest(msgs, placement, 6, 1 << 20, fmt="avro")


@pytest.mark.parametrize("placement", [TAILSIFT, COLLECTOR])
def test_the_chaos_suites_hostile_avro_ingests_alike(placement):
    from pipeline.chaos import fuzz

    msgs = [Received(i % 6, i, h.key, h.value) for i, h in enumerate(fuzz.messages(300, "avro", seed=23))]
    now_ns = time.time_ns()
    for i in range(0, len(msgs), 50):
        assert_same_ingest(msgs[i : i + 50], placement, 6, 1 << 20, now_ns=now_ns, fmt="avro")


def test_the_batch_lists_must_line_up():
    codec = native.NativeCodec("otlp_proto", BOUNDS)
    batch = Consumed.of([Received(0, 0, None, GENERATED_OTLP[0])])
    with pytest.raises(ValueError, match="holds"):
        codec.ingest_counted(batch, NOW, native_sli_windows(WINDOW_NS, 0), [], True, TAILSIFT, 6, 1 << 20, 1 << 24)
