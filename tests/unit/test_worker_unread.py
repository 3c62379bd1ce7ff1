"""The worker's count of unread input per owned partition (``Worker._unread``): the input-lag gauge
and the backlog guard's "behind" partitions both come from it."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.kafka.worker import Worker


def unread(state: dict[int, tuple[int, int, int]], committed: dict[int, tuple[int, int]]) -> dict[int, int]:
    fake = SimpleNamespace(committed=committed)
    fake._fetch_from = lambda p, pos: Worker._fetch_from(fake, p, pos)  # type: ignore[arg-type]
    return Worker._unread(fake, state)  # type: ignore[arg-type]


def test_a_partition_with_no_position_counts_from_its_committed_offset():
    """Before: a partition nothing was read from since it was assigned or rewound (librdkafka's
    position still unset) counted every message from offset 0 as unread. With everything committed
    and nothing new arriving that stayed so for good — the zombie test's survivor reported an input
    lag of 2,954 with nothing uncommitted, and `_behind` held its decisions to the backlog bound."""
    state = {3: (-1001, 0, 1000), 4: (-1001, 0, 1200), 5: (-1001, 0, 754)}
    assert unread(state, {3: (1000, -1), 4: (1200, -1), 5: (754, -1)}) == {3: 0, 4: 0, 5: 0}
    assert unread(state, {3: (990, -1), 4: (1200, -1), 5: (700, -1)}) == {3: 10, 4: 0, 5: 54}


def test_nothing_committed_counts_from_the_low_watermark_and_a_position_wins():
    assert unread({0: (-1001, 100, 250)}, {}) == {0: 150}  # retention removed offsets below 100
    assert unread({0: (-1001, -1, -1)}, {}) == {0: 0}  # no watermark fetched yet
    assert unread({0: (240, 100, 250)}, {0: (200, -1)}) == {0: 10}  # read past the committed offset
