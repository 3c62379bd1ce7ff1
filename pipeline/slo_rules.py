"""``tailsift slo rules``: Prometheus alerting rules for the SLOs in the config.

The job counts, for every SLO, the spans it selects and the bad ones — exactly, before any
sampling — as ``tailsift_slo_events_total{slo}`` and ``tailsift_slo_bad_events_total{slo}``
(added when an SLI window is emitted). Burn rate over a window W is
``sum(rate(bad[W])) / sum(rate(events[W])) / (1 − objective)``: summed over every worker, and
``rate()`` absorbs worker restarts. Multi-window, multi-burn-rate: an alert fires when both the long
and the short window burn faster than the factor (fast to fire, fast to reset).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from operators.slo import DEFAULT_ALERTS, BurnAlert, Objective, window_label

if TYPE_CHECKING:
    from pipeline.config import Config, SloObjectiveConfig

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd])", duration)
    if not m:
        raise ValueError(f"bad duration {duration!r} (e.g. 5m, 1h, 3d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def objective(c: SloObjectiveConfig) -> Objective:
    alerts = (
        DEFAULT_ALERTS
        if c.alerts is None
        else tuple(BurnAlert(seconds(a.long_window), seconds(a.short_window), a.factor, a.severity) for a in c.alerts)
    )
    return Objective(
        name=c.name,
        service=c.service,
        objective=c.objective_percent / 100.0,
        kind=c.type,
        threshold_ms=c.threshold_ms,
        operation=c.operation,
        span_kind=c.span_kind,
        period_s=int(c.period_days * 86_400),
        alerts=alerts,
    )


def objectives(config: Config) -> list[Objective]:
    return [objective(c) for c in config.slo.objectives]


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rules(objs: list[Objective]) -> dict:
    """The Prometheus rule file as a dict (``groups`` → ``rules``)."""
    out = []
    for o in objs:
        what = (
            f"{o.objective * 100:g}% of {o.service}"
            + (f" {o.operation}" if o.operation != "*" else "")
            + (f" spans under {o.threshold_ms:g} ms" if o.kind == "latency" else " spans without error")
        )
        rs: list[dict] = []
        sel = f"slo={_q(o.name)}"
        budget = 1.0 - o.objective

        def burn(w: str, sel: str = sel, budget: float = budget) -> str:
            return (
                f"(sum(rate(tailsift_slo_bad_events_total{{{sel}}}[{w}])) / "
                f"sum(rate(tailsift_slo_events_total{{{sel}}}[{w}]))) / {budget:.6g}"
            )

        for a in o.alerts:
            lw, sw = window_label(a.long_s), window_label(a.short_s)
            rs.append(
                {
                    "alert": f"SLOBurnRate{a.severity.capitalize()}",
                    "expr": f"{burn(lw)} > {a.factor:g}\nand\n{burn(sw)} > {a.factor:g}",
                    "for": "1m" if a.severity == "page" else "15m",
                    "labels": {
                        "severity": a.severity,
                        "slo": o.name,
                        "service": o.service,
                        "long_window": lw,
                        "short_window": sw,
                    },
                    "annotations": {
                        "summary": f"{o.name}: error budget burning at > {a.factor:g}x over {lw} and {sw}",
                        "description": (
                            f"SLO {what} over {window_label(o.period_s)}. At this rate the budget "
                            f"lasts {o.period_s / a.factor / 86_400:.1f} days. Exact pre-sampling counts from tailsift."
                        ),
                    },
                }
            )
        period = window_label(o.period_s)
        rs.append(
            {
                "alert": "SLOErrorBudgetExhausted",
                "expr": (
                    f"(sum(increase(tailsift_slo_bad_events_total{{{sel}}}[{period}])) / "
                    f"sum(increase(tailsift_slo_events_total{{{sel}}}[{period}]))) / {budget:.6g} >= 1"
                ),
                "for": "5m",
                "labels": {"severity": "ticket", "slo": o.name, "service": o.service},
                "annotations": {
                    "summary": f"{o.name}: error budget for {period} exhausted",
                    "description": f"SLO {what}.",
                },
            }
        )
        out.append({"name": f"tailsift-slo-{o.name}", "rules": rs})
    return {"groups": out}


def render(objs: list[Objective]) -> str:
    import yaml

    return yaml.safe_dump(rules(objs), sort_keys=False, width=1_000)


def main(config: Config, args: argparse.Namespace) -> int:
    objs = objectives(config)
    if not objs:
        print("tailsift slo rules: the config has no slo.objectives", file=sys.stderr)
        return 2
    text = render(objs)
    if args.output and args.output != "-":
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
