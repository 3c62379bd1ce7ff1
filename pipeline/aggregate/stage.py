"""The aggregation stage's state machine over Faust tables: one partial in, merged windows out.

Three tables, all raw bytes (no JSON per record), all changelog-backed in ``memory://`` stores
(the state is small and bounded, a restart restores it from the changelogs; no local RocksDB
files that could disagree with them):

- ``open``: (partition, window) → the merge so far (``windows.OpenWindow``), internal changelog;
  once emitted, a closed marker (the header alone) for ``closed_memory_seconds``;
- ``views``: partition → the stage's event time for it (newest ``emitted_at`` of a partial, or
  of a tick: the stage clock minus ``idle_seconds`` when the partition is quiet);
- ``emitted``: its changelog **is** ``topics.sli_merged`` — a merged window is written as a table
  change, so it is in the same Kafka transaction as the removal of the window from ``open`` and
  the input offsets (Faust ``exactly_once``). Recovery reads it back to remember recent emission
  keys and to rebuild the SLO book; it keeps no values in memory.

Every write is awaited before the step ends (not ``send_soon``): Faust's exactly_once commit does
not flush its send buffer before committing offsets, so a buffered change could land in the
transaction after its input offset (and be lost with a crash between the two). A commit can still
fall between two writes of one step; each step is idempotent against that: a re-read partial at
or below a window's ``last_offset`` (open, or its closed marker) is a no-op, and an emission whose
key is already in ``sli_merged`` is not written again. The marker matters because a replay need not
see partials and ticks in their first order: a window can close before a re-read partial that it
already merged comes round again (found by the kill -9 test: one partial counted twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections import OrderedDict, deque
from typing import Any

from pipeline.aggregate import windows as W
from pipeline.aggregate.slo_book import SloBook
from pipeline.codecs import avro

log = logging.getLogger("tailsift.aggregate")
_VIEW = struct.Struct(">q")
_NS = 1_000_000_000
_PARTITION = "_sli_merged_partition"  # in /sli's recent windows: the sli_merged partition each came from


def _encode(record: dict) -> bytes:
    return avro.encode(avro.SLI_WINDOW, record)


def _decode(value: bytes) -> dict:
    return avro.decode(avro.SLI_WINDOW, value)


def recent_entry(partition: int, record: dict) -> dict:
    """A merged window as ``/sli`` and ``/metrics`` keep it: with its ``sli_merged`` partition, so
    the windows of a partition that moved to another instance leave them too."""
    return {**record, _PARTITION: partition}


def open_key(partition: int, key: bytes) -> bytes:
    # the partition leads: a window key hashed to two partitions (a producer with another
    # partitioner) stays two windows instead of colliding in the one dict Faust keeps per table
    return b"%d" % partition + W.SEP.encode() + key


def partition_of(open_table_key: bytes) -> int:
    return int(open_table_key.split(W.SEP.encode(), 1)[0])


class Stage:
    """Holds the tables and does the work; ``pipeline.aggregate.app`` wires it to Faust."""

    def __init__(
        self, config, open_table, views_table, emitted_table, status_table, book: SloBook, recent: deque, backlog
    ):
        a = config.aggregate
        self.grace_ns = int(a.grace_seconds * _NS)
        self.idle_ns = int(a.idle_seconds * _NS)
        self.max_open = a.max_open_windows
        self.closed_memory_ns = int(a.closed_memory_seconds * _NS)
        self.open = open_table
        self.views = views_table
        self.emitted = emitted_table
        self.status_table = status_table
        self.book = book
        self.backlog = backlog  # ``backlog.Backlog``: has the stage read every partial of a partition?
        self.lock = asyncio.Lock()  # the agent and the idle timer never interleave their steps
        self.next_due: dict[int, int] = {}  # partition → earliest end + grace of its open windows
        self.last_arrival: dict[int, float] = {}  # partition → stage clock of its newest partial
        self.recent = recent  # newest merged windows, for /sli (shared with the table recovery)
        self.counts: dict[str, int] = {
            "partials": 0,
            "partials_replayed": 0,
            "partials_undecodable": 0,
            "partials_late": 0,
            "emitted": 0,
            "emitted_late": 0,
            "emissions_replayed": 0,
            "closed_by_bound": 0,
            "ticks_behind": 0,
        }

    # ---- writes: the local store and the changelog record, awaited ----

    async def _put(self, table, partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        await table.changelog_topic.send(
            key=key, value=value, partition=partition, key_serializer="raw", value_serializer="raw"
        )

    def view(self, partition: int) -> int:
        v = self.views.data.get(b"%d" % partition)
        return _VIEW.unpack(v)[0] if v else 0

    async def _advance(self, partition: int, to_ns: int) -> bool:
        if to_ns <= self.view(partition):
            return False
        await self._put(self.views, partition, b"%d" % partition, _VIEW.pack(to_ns))
        return True

    # ---- the steps ----

    async def on_partial(self, partition: int, offset: int, value: bytes | None) -> None:
        self.last_arrival[partition] = time.monotonic()
        self.backlog.read(partition, offset)
        try:
            record = _decode(value or b"")
        except Exception as exc:  # noqa: BLE001 - hostile input is data: count it, never crash the stage
            self.counts["partials_undecodable"] += 1
            log.warning("partition %d offset %d: undecodable SliWindow (%s); skipped", partition, offset, exc)
            return
        self.counts["partials"] += 1
        await self._advance(partition, record["emitted_at_unix_nano"])
        key = open_key(partition, W.window_key(record))
        packed = self.open.data.get(key)
        if packed is not None and W.is_closed(packed):
            if offset <= W.closed_through(packed):
                self.counts["partials_replayed"] += 1  # merged into a window already emitted
                return
            packed = None  # a straggler: the window opens again and is emitted as a further record
        if packed is None:
            window = W.start_window(record, partition, offset)
        else:
            window = W.OpenWindow.unpack(packed, _decode)
            try:
                changed = W.merge_partial(window, record, offset)
            except W.IncompatiblePartial as exc:
                self.counts["partials_undecodable"] += 1
                log.warning("partition %d offset %d: %s; skipped", partition, offset, exc)
                return
            if not changed:
                self.counts["partials_replayed"] += 1
                return
        if window.end_ns + self.grace_ns <= self.view(partition):
            self.counts["partials_late"] += 1  # emitted at once below, as a further record of the window
        await self._put(self.open, partition, key, window.pack(_encode))
        self.next_due[partition] = min(self.next_due.get(partition, window.end_ns), window.end_ns)
        await self.close_due(partition)
        await self.enforce_bound(partition)

    def idle_partitions(self, partitions: set[int]) -> dict[int, int]:
        """Partitions quiet for ``idle_seconds`` (stage clock) → the event time a tick gives them."""
        now = time.monotonic()
        out = {}
        for p in sorted(partitions):
            last = self.last_arrival.setdefault(p, now)
            if (now - last) * _NS >= self.idle_ns:
                out[p] = time.time_ns() - self.idle_ns
        return out

    async def on_tick(self, partition: int, value: bytes | None) -> None:
        """A tick record (see ``pipeline.aggregate.app``): the partition's event time follows the
        stage clock minus ``idle_seconds`` it carries; windows complete by then are emitted. Only a
        partition with no partial left unread: a tick read before older partials (its own topic, no
        order between the two) is dropped — the timer writes another while the partition stays quiet."""
        if not value or len(value) != _VIEW.size:
            return
        to_ns = _VIEW.unpack(value)[0]
        if to_ns <= self.view(partition):
            return
        if not await asyncio.get_running_loop().run_in_executor(None, self.backlog.caught_up, partition):
            self.counts["ticks_behind"] += 1
            return
        await self._advance(partition, to_ns)
        await self.close_due(partition)

    def _open_ends(self, partition: int, closed: bool = False) -> list[tuple[bytes, int]]:
        """(key, window end) of the partition's open windows (or of its closed markers)."""
        out = []
        for k, v in list(self.open.data.items()):
            if W.is_closed(v) != closed:
                continue
            p, end = W.peek_end(v)
            if p == partition:
                out.append((k, end))
        return out

    async def forget_closed(self, partition: int, view_ns: int) -> None:
        """Closed markers live ``closed_memory_seconds`` of event time past the grace: far longer than
        a commit interval, the most a crash can make the stage re-read."""
        for key in W.due(self._open_ends(partition, closed=True), view_ns, self.grace_ns + self.closed_memory_ns):
            await self._put(self.open, partition, key, None)

    async def close_due(self, partition: int) -> None:
        view = self.view(partition)
        if self.next_due.get(partition, 0) + self.grace_ns > view:
            return
        ends = self._open_ends(partition)
        for key in W.due(ends, view, self.grace_ns):
            await self._emit(partition, key, view)
        await self.forget_closed(partition, view)
        rest = [end for k, end in self._open_ends(partition)]
        self.next_due[partition] = min(rest) if rest else 2**62

    async def enforce_bound(self, partition: int) -> None:
        over = self.open_windows() - self.max_open
        if over <= 0:
            return
        ends = self._open_ends(partition)
        for key in W.over_bound(ends, len(ends) - over):
            self.counts["closed_by_bound"] += 1
            await self._emit(partition, key, self.view(partition))

    async def _emit(self, partition: int, key: bytes, view_ns: int) -> None:
        window = W.OpenWindow.unpack(self.open.data[key], _decode)
        emission = W.emission_key(W.window_key(window.record), partition, window.first_offset)
        if self.emitted.emissions.remembers(emission):
            self.counts["emissions_replayed"] += 1  # written before a crash; only the removal was lost
        else:
            record = W.final_record(window, view_ns)
            late = self.emitted.emissions.remembers_window(W.key_of_emission(emission))
            await self._put_emitted(partition, emission, record)
            self.counts["emitted_late" if late else "emitted"] += 1
            for name in self.book.feed(partition, record):
                status = json.dumps(self.book.status(name)[0]).encode()
                await self._put(self.status_table, partition, name.encode(), status)
        await self._put(self.open, partition, key, W.closed_marker(window))

    async def _put_emitted(self, partition: int, emission: bytes, record: dict) -> None:
        self.emitted.emissions.remember(partition, emission)
        self.recent.append(recent_entry(partition, record))
        await self.emitted.changelog_topic.send(
            key=emission, value=_encode(record), partition=partition, key_serializer="raw", value_serializer="raw"
        )

    def on_assigned(self, partitions: set[int]) -> None:
        """After a rebalance the tables hold what recovery restored: rescan before trusting ``next_due``;
        assigned partitions are read again from their committed offsets.

        Whatever this process still holds of a partition that is no longer its own goes: another
        instance owns it now, and this copy may hold what its last transaction did before the new
        owner's producer aborted it (windows merged or emitted that no reader will ever see). Kept,
        it would stand in for the changelog when the partition comes back — an emission remembered
        that was never committed is never written (a window missing), a window restored over it
        keeps keys the changelog never had. Forgotten, the partition comes back as recovery restores
        it from its changelogs: exactly what was committed with its input offsets. Its windows leave
        ``/sli``, ``/metrics`` and ``/slo`` here too: they are the new owner's to show."""
        self.next_due.clear()
        self.backlog.reset()
        for table in (self.open, self.views):
            for key in [k for k in table.data.keys() if partition_of(k) not in partitions]:
                table.data.pop(key, None)
        for p in self.emitted.emissions.partitions() | self.book.partitions() | set(self.last_arrival):
            if p not in partitions:
                self.emitted.emissions.forget(p)
                self.book.forget(p)
                self.last_arrival.pop(p, None)
        kept = [r for r in self.recent if r[_PARTITION] in partitions]
        if len(kept) < len(self.recent):
            self.recent.clear()
            self.recent.extend(kept)

    # ---- views ----

    def open_windows(self) -> int:
        return sum(1 for v in self.open.data.values() if not W.is_closed(v))

    def sli(self, service: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows = []
        for r in reversed(self.recent):
            if service is not None and r["service"] != service:
                continue
            rows.append(
                {
                    "service": r["service"],
                    "operation": r["operation"],
                    "span_kind": r["span_kind"],
                    "status": r["status"],
                    "window_start_unix_nano": r["window_start_unix_nano"],
                    "window_end_unix_nano": r["window_end_unix_nano"],
                    "spans": r["span_count"],
                    "errors": r["error_count"],
                    "roots": r["root_count"],
                    "latency_ms": r["latency_ms"],
                    "partitions": r["partitions"],
                }
            )
            if len(rows) >= limit:
                break
        return rows


class EmittedLog:
    """Recent emission keys (bounded LRU) and the windows they belong to, with the partition each
    came from; fed by the stage when it writes and by table recovery when it reads ``sli_merged``
    back, emptied of a partition when the partition leaves this process."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: OrderedDict[bytes, int] = OrderedDict()  # emission key → partition
        self._windows: OrderedDict[bytes, int] = OrderedDict()  # window key → partition

    def remember(self, partition: int, emission: bytes) -> None:
        for d, k in ((self._keys, emission), (self._windows, W.key_of_emission(emission))):
            d[k] = partition
            d.move_to_end(k)
            while len(d) > self.capacity:
                d.popitem(last=False)

    def remembers(self, emission: bytes) -> bool:
        return emission in self._keys

    def remembers_window(self, window: bytes) -> bool:
        return window in self._windows

    def partitions(self) -> set[int]:
        return set(self._keys.values()) | set(self._windows.values())

    def forget(self, partition: int) -> None:
        for d in (self._keys, self._windows):
            for k in [k for k, p in d.items() if p == partition]:
                del d[k]

    def __len__(self) -> int:
        return len(self._keys)
