"""``ema_dynamic`` (Refinery's EMADynamic sampler): like ``dynamic``, but per-key counts are an
exponential moving average over ``adjustment_interval_s`` intervals (``weight`` on the newest),
keys whose average falls below ``age_out_value`` are forgotten, and a burst (the running
interval's count above ``burst_multiple`` × the average total) recomputes the rates at once
instead of waiting for the interval to end. Goal: about 1/``goal_sample_rate`` of traces kept."""

from __future__ import annotations

from collections.abc import Sequence

from operators.adaptive import EmaKeyedSampler


class EmaDynamicPolicy(EmaKeyedSampler):
    kind = "ema_dynamic"

    def __init__(
        self,
        name: str,
        goal_sample_rate: float,
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
        self.goal_sample_rate = goal_sample_rate

    def _goal_count(self, ema_total: float) -> float:
        return ema_total / self.goal_sample_rate
