"""``dynamic`` (Refinery's Dynamic sampler): per-key sample rates recomputed every
``clear_frequency_s`` from the last interval's counts so that about 1/``sample_rate`` of all
traces are kept, rare keys (e.g. service + route + status) far more often than common ones.
Each kept trace carries the rate in force when it was decided (see ``operators.adaptive``)."""

from __future__ import annotations

from collections.abc import Sequence

from operators.adaptive import KeyedSampler, allocate


class DynamicPolicy(KeyedSampler):
    kind = "dynamic"

    def __init__(
        self,
        name: str,
        sample_rate: float,
        field_list: Sequence[str],
        clear_frequency_s: float = 30.0,
        max_keys: int = 500,
    ):
        super().__init__(name, field_list, int(clear_frequency_s * 1e9), max_keys)
        self.sample_rate = sample_rate

    def _on_close(self, closed: int, now_ns: int) -> None:
        counts = self._counter.take()
        self._rates = allocate(counts, sum(counts.values()) / self.sample_rate)
