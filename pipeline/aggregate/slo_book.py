"""SLO status from merged windows: ``operators.slo.SloTracker`` fed with each ``sli_merged`` record.

The tracker's state is a pure function of the merged windows it was fed, so the stage rebuilds it
on start-up from ``sli_merged`` itself (the table recovery reads it anyway): no second copy of the
SLO state to keep consistent with the emitted windows. Budgets therefore cover at most
``topics.sli_merged.retention_ms`` of history (7 days by default; raise it to the SLO period).

One tracker per ``sli_merged`` partition: a partition that moves to another stage instance takes
its windows with it (``forget``), and when it comes back the table recovery feeds all of them
again — into an empty tracker, so no window counts twice. An objective's windows normally sit in one
partition (partials are keyed by service); ``status`` adds the trackers' minute buckets up when they
do not (a producer with another partitioner).
"""

from __future__ import annotations

import time

from operators.sli import sketch_from_record
from operators.slo import Objective, SloTracker, window_label


class SloBook:
    def __init__(self, objectives: list[Objective]):
        self._objectives = list(objectives)
        self._trackers: dict[int, SloTracker] = {}  # sli_merged partition → the windows it holds

    @property
    def objectives(self) -> list[Objective]:
        return self._objectives

    def feed(self, partition: int, record: dict) -> list[str]:
        """Count one merged window (or late part of one) of ``partition``; returns the objectives it fed."""
        matching = [
            o for o in self._objectives if o.matches(record["service"], record["operation"], record["span_kind"])
        ]
        if not matching:
            return []
        tracker = self._trackers.get(partition)
        if tracker is None:
            tracker = self._trackers[partition] = SloTracker(self._objectives)
        sketch = sketch_from_record(record["sketch"]) if any(o.kind == "latency" for o in matching) else None
        fed = tracker.observe(
            record["service"],
            record["operation"],
            record["span_kind"],
            record["window_end_unix_nano"],
            record["span_count"],
            record["error_count"],
            sketch,
        )
        return [name for name, _, _ in fed]

    def partitions(self) -> set[int]:
        return set(self._trackers)

    def forget(self, partition: int) -> None:
        """The partition is no longer this instance's: its windows leave the book."""
        self._trackers.pop(partition, None)

    def _tracker(self) -> SloTracker:
        """One tracker over every partition's windows: the only one when one partition holds them
        all (the usual case), else their minute buckets added up."""
        trackers = [t for t in self._trackers.values() if any(s.latest_ns for s in t._state.values())]
        if len(trackers) == 1:
            return trackers[0]
        merged = SloTracker(self._objectives)
        for t in trackers:
            for name, state in t._state.items():
                into = merged._state[name]
                into.latest_ns = max(into.latest_ns, state.latest_ns)
                for minute, (total, bad) in state.buckets.items():
                    b = into.buckets.setdefault(minute, [0.0, 0.0])
                    b[0] += total
                    b[1] += bad
        return merged

    def status(self, name: str | None = None) -> list[dict]:
        """Budget remaining and burn rate per alert window, at each objective's newest window end
        (event time); ``firing`` lists the severities whose long and short windows both burn
        faster than their factor. ``count_above`` is the latency SLOs' bad-event rule."""
        out = []
        tracker = self._tracker()
        for s in tracker.status():
            if name is not None and s["slo"] != name:
                continue
            state = tracker._state[s["slo"]]  # newest window end fed: the status's event time
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
