"""``windowed_throughput`` (Refinery's WindowedThroughput sampler): keep about
``goal_throughput_per_sec`` traces per second, with per-key rates recomputed every
``update_frequency_s`` from the counts of the last ``lookback_frequency_s`` (a ring of
update-sized buckets, so old traffic leaves the window exactly), rare keys favoured."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from operators.adaptive import KeyedSampler, allocate


class WindowedThroughputPolicy(KeyedSampler):
    kind = "windowed_throughput"

    def __init__(
        self,
        name: str,
        goal_throughput_per_sec: float,
        field_list: Sequence[str],
        update_frequency_s: float = 1.0,
        lookback_frequency_s: float = 30.0,
        max_keys: int = 500,
    ):
        super().__init__(name, field_list, int(update_frequency_s * 1e9), max_keys)
        self.goal_throughput_per_sec = goal_throughput_per_sec
        self.update_frequency_s = update_frequency_s
        self.n_buckets = max(1, round(lookback_frequency_s / update_frequency_s))
        self._buckets: deque[dict[str, float]] = deque(maxlen=self.n_buckets)

    def _on_close(self, closed: int, now_ns: int) -> None:
        self._buckets.append(self._counter.take())
        for _ in range(min(closed - 1, self.n_buckets)):
            self._buckets.append({})
        window: dict[str, float] = {}
        for bucket in self._buckets:
            for k, c in bucket.items():
                window[k] = window.get(k, 0.0) + c
        if len(window) > self.max_keys:
            for k in sorted(window, key=window.__getitem__)[: len(window) - self.max_keys]:
                del window[k]
        seconds = len(self._buckets) * self.update_frequency_s
        self._rates = allocate(window, self.goal_throughput_per_sec * seconds)
