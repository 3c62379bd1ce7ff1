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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP


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


class StageApp(faust.App):
    """``faust.App`` on the transport above (a ``kafka://`` broker URL, as before)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
