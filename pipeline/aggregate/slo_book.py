"""SLO status from merged windows: ``operators.slo.SloTracker`` fed with each ``sli_merged`` record.

The tracker's state is a pure function of the merged windows it was fed, so the stage rebuilds it
on start-up from ``sli_merged`` itself (the table recovery reads it anyway): no second copy of the
SLO state to keep consistent with the emitted windows. Budgets therefore cover at most
``topics.sli_merged.retention_ms`` of history (7 days by default; raise it to the SLO period).
"""

from __future__ import annotations

import time

from operators.sli import sketch_from_record
from operators.slo import Objective, SloTracker, window_label


class SloBook:
    def __init__(self, objectives: list[Objective]):
        self.tracker = SloTracker(objectives)

    @property
    def objectives(self) -> list[Objective]:
        return self.tracker.objectives

    def feed(self, record: dict) -> list[str]:
        """Count one merged window (or late part of one); returns the objectives it fed."""
        matching = [
            o for o in self.tracker.objectives if o.matches(record["service"], record["operation"], record["span_kind"])
        ]
        if not matching:
            return []
        sketch = sketch_from_record(record["sketch"]) if any(o.kind == "latency" for o in matching) else None
        fed = self.tracker.observe(
            record["service"],
            record["operation"],
            record["span_kind"],
            record["window_end_unix_nano"],
            record["span_count"],
            record["error_count"],
            sketch,
        )
        return [name for name, _, _ in fed]

    def status(self, name: str | None = None) -> list[dict]:
        """Budget remaining and burn rate per alert window, at each objective's newest window end
        (event time); ``firing`` lists the severities whose long and short windows both burn
        faster than their factor. ``count_above`` is the latency SLOs' bad-event rule."""
        out = []
        for s in self.tracker.status():
            if name is not None and s["slo"] != name:
                continue
            state = self.tracker._state[s["slo"]]  # newest window end fed: the status's event time
            out.append(
                {
                    "slo": s["slo"],
                    "service": s["service"],
                    "budget_remaining": s["budget_remaining"],
                    "burn_rates": {window_label(w): r for w, r in s["burn_rates"].items()},
                    "firing": s["firing"],
                    "as_of_unix_nano": state.latest_ns,
                    "computed_at_unix_nano": time.time_ns(),
                }
            )
        return out
