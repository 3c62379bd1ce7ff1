"""The figures a scenario prints and the limits they are judged by.

A figure misses when its value breaks its limit. ``--relax NAME`` (scenario.figure) keeps a known
failure in the table, marked, without failing the run: the test of the short profile lists
precisely what it relaxes and why; ``make chaos`` relaxes nothing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase


@dataclass
class Figure:
    name: str
    value: float | int | str
    limit: str = ""  # "== 0", "<= 123", "> 0" or "" (reported, not judged)
    relaxed: bool = False

    @property
    def ok(self) -> bool:
        if not self.limit or isinstance(self.value, str):
            return True
        op, _, bound = self.limit.partition(" ")
        b = float(bound)
        v = float(self.value)
        return {"==": v == b, "<=": v <= b, ">": v > b, ">=": v >= b}[op]


@dataclass
class ScenarioResult:
    scenario: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # the scenario could not finish (its figures so far are kept)

    def add(self, name: str, value, limit: str = "") -> None:
        self.figures.append(Figure(name, value, limit))

    def relax(self, patterns: list[str]) -> None:
        """Mark figures named by ``scenario.figure`` patterns (shell wildcards) as known failures."""
        for f in self.figures:
            if any(fnmatchcase(f"{self.scenario}.{f.name}", p) for p in patterns):
                f.relaxed = True

    @property
    def missed(self) -> list[Figure]:
        return [f for f in self.figures if not f.ok and not f.relaxed]

    @property
    def ok(self) -> bool:
        return not self.error and not self.missed


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(results: list[ScenarioResult], console) -> None:
    from rich.table import Table

    table = Table(title="tailsift chaos: figures", show_lines=False)
    for col in ("scenario", "figure", "value", "limit", ""):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in results:
        for f in r.figures:
            mark = "ok" if f.ok else ("relaxed" if f.relaxed else "MISS")
            style = None if f.ok else ("yellow" if f.relaxed else "bold red")
            table.add_row(r.scenario, f.name, _fmt(f.value), f.limit, mark, style=style)
        if r.error:
            table.add_row(r.scenario, "error", r.error[:100], "", "MISS", style="bold red")
        table.add_row(r.scenario, "duration s", _fmt(round(r.seconds, 1)), "", "", end_section=True)
    console.print(table)
    for r in results:
        for n in r.notes:
            console.print(f"  [dim]{r.scenario}:[/] {n}")


def to_json(results: list[ScenarioResult]) -> str:
    return json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=2, default=str)
