"""The stage's steps against in-memory tables (no Faust, no broker): a replay after a crash that
meets the partials and ticks in another order than the first run counts every partial once; a tick
read before older partials of its partition does not advance it."""

from __future__ import annotations

import asyncio
import struct
from collections import deque

import pytest

from operators.sli import SliWindows, window_record
from pipeline.aggregate.slo_book import SloBook
from pipeline.aggregate.stage import EmittedLog, Stage
from pipeline.codecs import avro
from pipeline.config import parse
from tests.spans import span

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Table:
    """What the stage uses of a Faust table: its local store and its changelog topic."""

    def __init__(self):
        self.data: dict[bytes, bytes] = {}
        self.changelog_topic = self
        self.sent: list[tuple[int, bytes, bytes | None]] = []

    async def send(self, key, value, partition, key_serializer, value_serializer):
        self.sent.append((partition, key, value))


class EmittedTable(Table):
    def __init__(self):
        super().__init__()
        self.emissions = EmittedLog(100)


class Backlog:
    """What the stage asks of ``pipeline.aggregate.backlog.Backlog``: the partition's committed
    partials end at ``end[p]``; it is caught up once the stage was handed the last of them."""

    def __init__(self):
        self.end: dict[int, int] = {}
        self.read_through: dict[int, int] = {}

    def read(self, partition: int, offset: int) -> None:
        self.read_through[partition] = max(self.read_through.get(partition, 0), offset + 1)

    def caught_up(self, partition: int) -> bool:
        return self.read_through.get(partition, 0) >= self.end.get(partition, 0)

    def reset(self) -> None:
        self.read_through.clear()


def stage(backlog: Backlog | None = None) -> tuple[Stage, EmittedTable]:
    emitted = EmittedTable()
    cfg = parse({"aggregate": {"grace_seconds": 1, "idle_seconds": 5}})
    backlog = backlog or Backlog()
    return Stage(cfg, Table(), Table(), emitted, Table(), SloBook([]), deque(maxlen=10), backlog), emitted


def partial(n_spans: int, emitted_at: int) -> bytes:
    w = SliWindows(2 * S, 0)
    w.add(0, "checkout", [span(start=T0 + i, end=T0 + i + 5_000_000) for i in range(n_spans)])
    (agg,) = w.due(0, flush_all=True)
    return avro.encode(avro.SLI_WINDOW, window_record(agg, "w", emitted_at))


def tick(event_time_ns: int) -> bytes:
    return struct.pack(">q", event_time_ns)


def emitted_spans(emitted: EmittedTable) -> int:
    return sum(avro.decode(avro.SLI_WINDOW, v)["span_count"] for _, _, v in emitted.sent)


def test_a_partial_re_read_after_its_window_was_emitted_is_not_counted_again():
    """A crash after the window merged the partial at offset 11 but before offset 11 was committed:
    the replay reads an idle tick first (it closes the window, 5 spans in it) and offset 11 again.
    The old stage deleted an emitted window outright, so offset 11 opened it again as a late window
    and was emitted a second time: 8 spans in sli.merged for 5 produced."""
    st, emitted = stage()

    async def run():
        await st.on_partial(0, 10, partial(2, T0))
        await st.on_partial(0, 11, partial(3, T0 + 1))
        # crash here; the committed offsets end at 11 (10 is done), the tables hold both partials.
        # the replay meets the tick first, then offset 11 again:
        await st.on_tick(0, tick(T0 + 10 * S))
        await st.on_partial(0, 11, partial(3, T0 + 1))

    asyncio.run(run())
    assert emitted_spans(emitted) == 5
    assert len(emitted.sent) == 1 and st.counts["partials_replayed"] == 1 and st.counts["emitted_late"] == 0


def test_a_straggler_after_the_window_closed_is_emitted_as_a_further_record():
    st, emitted = stage()

    async def run():
        await st.on_partial(0, 10, partial(2, T0))
        await st.on_tick(0, tick(T0 + 10 * S))
        await st.on_partial(0, 12, partial(4, T0 + 10 * S))

    asyncio.run(run())
    assert emitted_spans(emitted) == 6 and len(emitted.sent) == 2
    assert st.counts["partials_late"] == 1 and st.open_windows() == 0
    assert len({k for _, k, _ in emitted.sent}) == 2  # each record its own key (window + first offset)


def test_an_emission_written_before_a_crash_is_not_written_again():
    """Crash after the merged window was written but before the window left the open table: the
    replayed step finds its key among the emitted ones (recovered from sli.merged) and only closes it."""
    st, emitted = stage()

    async def run():
        await st.on_partial(0, 10, partial(2, T0))
        key, value = next(iter(st.open.data.items()))
        await st.on_tick(0, tick(T0 + 10 * S))
        st.open.data[key] = value  # the removal was not committed; the emission was
        st.next_due.clear()
        await st.on_tick(0, tick(T0 + 11 * S))

    asyncio.run(run())
    assert emitted_spans(emitted) == 2 and st.counts["emissions_replayed"] == 1 and st.open_windows() == 0


def test_a_tick_read_before_older_partials_of_its_partition_does_not_close_their_window():
    """Partials at offsets 10 and 11 are in the partition, unread, when a tick (from the stage's own
    topic, no order with the partials) is read. The old stage advanced the partition to the tick and
    emitted the window with offset 10's 2 spans; offset 11 then came late: two records, 2 + 3 spans.
    Now the tick is dropped (counted ``ticks_behind``) and the next one, read once both partials
    are, emits the window once, 5 spans."""
    backlog = Backlog()
    backlog.end[0] = 12
    st, emitted = stage(backlog)

    async def run():
        await st.on_partial(0, 10, partial(2, T0))
        await st.on_tick(0, tick(T0 + 10 * S))
        assert emitted.sent == [] and st.counts["ticks_behind"] == 1
        await st.on_partial(0, 11, partial(3, T0 + 1))
        await st.on_tick(0, tick(T0 + 11 * S))

    asyncio.run(run())
    assert emitted_spans(emitted) == 5 and len(emitted.sent) == 1
    assert st.counts["partials_late"] == 0 and st.open_windows() == 0


def test_a_backlog_check_the_broker_does_not_answer_drops_the_tick_and_the_stage_goes_on():
    """librdkafka raising (a timeout while the broker is slow or away) must not crash the agent:
    the tick is dropped like one read before older partials."""
    from confluent_kafka import KafkaException

    from pipeline.aggregate.backlog import Backlog as RealBacklog

    class Unreachable(RealBacklog):
        def _caught_up(self, partition: int) -> bool:
            raise KafkaException("timed out")

    st, emitted = stage(Unreachable("127.0.0.1:1", "sli.windows", "g"))

    async def run():
        await st.on_partial(0, 10, partial(2, T0))
        await st.on_tick(0, tick(T0 + 10 * S))

    asyncio.run(run())
    assert emitted.sent == [] and st.counts["ticks_behind"] == 1 and st.open_windows() == 1


def test_a_partition_that_left_and_came_back_is_what_its_changelog_restores_not_what_this_process_kept():
    """Partition 0's window is merged (committed), then closed and emitted in a transaction that the
    new owner's producer aborts: the partition moved to a second stage instance, which left again
    before it closed the window. The partition comes back and recovery restores the window open, as
    committed. The old stage kept its own copy of partition 0 — the emission key among it — so the
    restored window, closed again, was taken for an emission written before a crash and not written:
    missing from sli.merged (the e2e second-instance test's missing window). Now a rebalance forgets
    what a partition that left had here: the window is emitted once, 2 spans; partition 1, which
    stayed, keeps its open window."""
    st, emitted = stage()

    async def run():
        await st.on_partial(0, 10, partial(2, T0))
        await st.on_partial(1, 10, partial(3, T0))
        committed = {t: {k: v for k, v in t.data.items() if k.startswith(b"0")} for t in (st.open, st.views)}
        await st.on_tick(0, tick(T0 + 10 * S))
        assert len(emitted.sent) == 1
        emitted.sent.clear()  # that transaction was aborted: no read_committed reader sees it
        st.on_assigned({1})  # partition 0 moved to the other instance
        assert st.open_windows() == 1 and st.view(0) == 0 and not st.emitted.emissions.partitions()
        assert not st.recent  # nor does /sli show its window any more
        for table, data in committed.items():  # it came back: recovery restores its changelogs
            table.data.update(data)
        st.on_assigned({0, 1})
        await st.on_tick(0, tick(T0 + 11 * S))

    asyncio.run(run())
    assert emitted_spans(emitted) == 2 and len(emitted.sent) == 1 and st.counts["emissions_replayed"] == 0
    assert st.open_windows() == 1  # partition 1's


def test_the_slo_book_forgets_a_partition_that_left_and_counts_its_windows_once_when_it_comes_back():
    from operators.slo import Objective

    def window(spans: int, errors: int) -> dict:
        record = avro.decode(avro.SLI_WINDOW, partial(1, T0))
        record.update(span_count=spans, error_count=errors)
        return record

    book = SloBook([Objective("checkout-avail", "checkout", 0.9)])
    book.feed(0, window(20, 1))
    book.feed(1, window(20, 3))  # the same service on two partitions: their windows add up
    assert book.status("checkout-avail")[0]["budget_remaining"] == pytest.approx(1 - (4 / 40) / 0.1)
    book.forget(0)
    assert book.status("checkout-avail")[0]["budget_remaining"] == pytest.approx(1 - (3 / 20) / 0.1)
    book.feed(0, window(20, 1))  # recovery feeds the returning partition's windows again
    assert book.status("checkout-avail")[0]["budget_remaining"] == pytest.approx(1 - (4 / 40) / 0.1)
