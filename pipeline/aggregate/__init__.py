"""The aggregation stage (``tailsift aggregate``): SLI partials of all workers → exact merged
windows on ``sli_merged`` and SLO status on ``slo_status``, served over HTTP. Faust belongs here
(per window, not per span): agents, changelog-backed tables, timers and web views."""
