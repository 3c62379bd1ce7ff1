"""``ema_throughput`` (Refinery's EMAThroughput sampler): keep about ``goal_throughput_per_sec``
traces per second (of the traces this policy sees), spread over keys like ``dynamic`` (rare keys
favoured), from EMA-smoothed per-key counts with age-out and burst detection (see
``ema_dynamic``). Rates apply from the end of the first interval; before that everything is kept."""

from __future__ import annotations

from collections.abc import Sequence

from operators.adaptive import EmaKeyedSampler


class EmaThroughputPolicy(EmaKeyedSampler):
    kind = "ema_throughput"

    def __init__(
        self,
        name: str,
        goal_throughput_per_sec: float,
        field_list: Sequence[str],
        adjustment_interval_s: float = 15.0,
        weight: float = 0.5,
        age_out_value: float = 0.5,
        burst_multiple: float = 2.0,
        burst_detection_delay: int = 3,
        max_keys: int = 500,
    ):
        super().__init__(
            name,
            field_list,
            int(adjustment_interval_s * 1e9),
            max_keys,
            weight,
            age_out_value,
            burst_multiple,
            burst_detection_delay,
        )
        self.goal_throughput_per_sec = goal_throughput_per_sec
        self.interval_s = adjustment_interval_s

    def _goal_count(self, ema_total: float) -> float:
        return self.goal_throughput_per_sec * self.interval_s
