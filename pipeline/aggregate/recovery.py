"""Faust's table recovery, told where the changelogs end: the stage's app and its Kafka transport.

Recovery replays a table's changelog partition up to its end, which Faust (faust-streaming 0.15,
``processing_guarantee="exactly_once"``) takes from aiokafka's ``last_stable_offset(tp)``: the
last stable offset seen in a *fetch response* for that partition. Right after an assignment (every
rebalance creates a new one) nothing has been fetched yet unless the fetcher happened to get there
first, so it is ``None``, Faust logs a highwater of -1 and restores nothing — "Recovery complete"
with every changelog partition unread. A stage taking over a partition then merged the partials
after the committed offset into empty windows (windows emitted with part of their counts, the
others missing), and a partition coming back found its stale, pre-revocation copy (seen as
"highwater -1" for changelogs of hundreds of records in ``test_aggregate_e2e``'s second-instance
test, whose windows then came out short or missing in 3 of 4 runs).

Here the end is asked of the broker instead: ``end_offsets`` is a ListOffsets request at the
consumer's isolation level (``read_committed`` under exactly_once), so the broker answers the last
stable offset whether or not the partition was fetched — what Faust meant to read.

That end is a transaction marker (the stage writes its changelogs in transactions), which a
``read_committed`` reader never receives: the last record read stays one short of it, and Faust's
recovery loop declares the partition read only once it has waited on an empty changelog queue twice
in a row and the consumer's position is past the end (``detect_aborted_tx``). It waits 5 s each time
(hard-coded), so every rebalance stalled the stage ≥ 10 s with nothing left to read. The queue below
gives up after ``aggregate.recovery_poll_ms`` instead (Faust's loop sees the same timeout and makes
the same check, position against end, only sooner).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import faust
from faust.tables.manager import TableManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.queues import ThrowableQueue


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # the broker's last stable offset (read_committed ListOffsets), not the one cached from the
        # last fetch response (None until the partition is fetched after its assignment)
        return await self._ensure_consumer().end_offsets(partitions)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _PolledQueue(ThrowableQueue):
    """The changelog queue, whose ``get`` raises ``TimeoutError`` after ``poll_s`` with nothing to
    return — what Faust's own 5 s ``wait_for`` around it raises, only sooner (nothing else reads it)."""

    def __init__(self, *args: Any, poll_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_s = poll_s

    async def get(self) -> Any:
        return await asyncio.wait_for(super().get(), self.poll_s)


class _TableManager(TableManager):
    @property
    def changelog_queue(self) -> ThrowableQueue:
        if self._changelog_queue is None:
            self._changelog_queue = _PolledQueue(
                maxsize=self.app.conf.stream_buffer_maxsize,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
                poll_s=self.app.recovery_poll_s,  # type: ignore[attr-defined]
            )
        return self._changelog_queue


class StageApp(faust.App):
    """``faust.App`` on the transport above (a ``kafka://`` broker URL, as before), whose table
    recovery polls its changelog queue every ``recovery_poll_s`` (Faust: 5 s; see above)."""

    def __init__(self, *args: Any, recovery_poll_s: float, **kwargs: Any) -> None:
        self.recovery_poll_s = recovery_poll_s
        super().__init__(*args, TableManager=_TableManager, **kwargs)

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
