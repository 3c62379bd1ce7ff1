"""Assemble the report page: sections of Plotly figures and tables in one Jinja2 template."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import plotly.io as pio
from jinja2 import Environment, PackageLoader, select_autoescape
from plotly.offline import get_plotlyjs

from pipeline.htmlreport import figures as F

# the modebar's "edit in Chart Studio" / cloud links would be the page's only way out
_PLOT_CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False}


@dataclass
class Section:
    id: str
    title: str
    note: str = ""
    figures: list[str] = field(default_factory=list)  # Plotly <div> + <script> fragments
    tables: list[dict] = field(default_factory=list)  # {"columns": [...], "rows": [[...]], "caption": str}
    columns: int = 1  # side by side: one column per config


@cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("pipeline.htmlreport", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _fig(fig, div_id: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG)


def _data_json(doc: dict) -> str:
    # "<" escaped as a JSON unicode escape: a "</script>" inside a span name cannot end the block
    return json.dumps(doc, sort_keys=True, allow_nan=False).replace("<", "\\u003c")


def _page(title: str, subtitle: str, doc: dict, sections: list[Section]) -> str:
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            title=title,
            subtitle=subtitle,
            sections=sections,
            data_json=_data_json(doc),
            plotly_js=get_plotlyjs(),
        )
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(columns: list[str], rows: list[list], caption: str = "") -> dict:
    return {"columns": columns, "rows": [[_fmt(v) for v in r] for r in rows], "caption": caption}


def _examples(prefix: str, examples: list[dict]) -> tuple[list[str], list[dict]]:
    figs, tables = [], []
    for i, ex in enumerate(examples):
        figs.append(_fig(F.waterfall(ex), f"{prefix}-waterfall-{i}"))
        sampling = next((s.get("sampling") for s in ex["spans"] if s.get("sampling")), {}) or {}
        tables.append(
            _table(
                ["attribute", "value"],
                [["trace_id", ex["trace_id"]], ["why shown", ex["why"]], ["policy", ex["policy"]]]
                + [[k, v] for k, v in sorted(sampling.items())],
                caption=f"{ex['why']} trace: sampling attributes",
            )
        )
    return figs, tables


# ---------------------------------------------------------------------------------------------
# live


def render_live(doc: dict) -> str:
    t = doc["totals"]
    sections = []
    width = doc.get("window_s") or F.bucket_seconds(doc["timeline"])
    summary = _table(
        ["figure", "value"],
        [
            ["spans in (SLI windows, every span)", t["input_spans"]],
            ["errors in (SLI windows)", t["input_errors"]],
            ["kept traces", t["kept_traces"]],
            ["kept spans", t["kept_spans"]],
            ["late records", t["late_records"]],
            ["traces they stand for (Σ adjusted count)", t["adjusted_count_sum"]],
            ["dead letters", sum(t["deadletters"].values())],
        ]
        + [[f"dead letters: {r}", n] for r, n in sorted(t["deadletters"].items())]
        + [[f"undecodable records on {topic} (left out)", n] for topic, n in sorted(t["undecodable_records"].items())],
    )
    sections.append(Section("summary", "Summary", tables=[summary]))
    sections.append(
        Section(
            "throughput",
            "Input vs kept",
            note=f"per {width:g} s window of span end time",
            figures=[_fig(F.throughput({"live": doc["timeline"]}, width), "live-throughput")],
        )
    )
    sections.append(
        Section(
            "keep-share",
            "Keep share by policy",
            figures=[
                _fig(F.keep_share_over_time(doc["timeline"], "Kept traces by deciding policy"), "live-keep-share")
            ],
            tables=[
                _table(
                    ["policy", "kept traces", "share %"],
                    [
                        [p, n, 100 * n / t["kept_traces"] if t["kept_traces"] else 0.0]
                        for p, n in sorted(doc["keep_share_by_policy"].items(), key=lambda kv: -kv[1])
                    ],
                )
            ],
        )
    )
    lat = doc["latency"]
    sections.append(
        Section(
            "latency",
            "Latency per service",
            note=f"from {lat['source']}",
            figures=[_fig(F.latency_over_time(lat["series"]), "live-latency")] if lat["series"] else [],
        )
    )
    ps = doc["per_service"]
    sections.append(
        Section(
            "errors",
            "Error rates",
            figures=[_fig(F.error_rate_over_time(lat["series"]), "live-errors")] if lat["series"] else [],
            tables=[
                _table(
                    ["service", "spans", "errors", "error %", "kept traces", "kept spans"],
                    [
                        [
                            s,
                            v["spans"],
                            v["errors"],
                            100 * v["errors"] / v["spans"] if v["spans"] else 0.0,
                            v["kept_traces"],
                            v["kept_spans"],
                        ]
                        for s, v in sorted(ps.items())
                    ],
                )
            ],
        )
    )
    slo = doc["slo"]
    if slo["objectives"]:
        sections.append(
            Section(
                "slo",
                "SLOs",
                note=f"from {slo['source']}",
                figures=[
                    _fig(F.slo_budget(slo["objectives"]), "live-slo-budget"),
                    _fig(F.slo_burn_rates(slo["objectives"]), "live-slo-burn"),
                ],
                tables=[
                    _table(
                        ["slo", "service", "budget remaining %", "firing"],
                        [
                            [o["slo"], o["service"], 100 * o["budget_remaining"], ", ".join(o["firing"]) or "-"]
                            for o in slo["objectives"]
                        ],
                    )
                ],
            )
        )
    else:
        sections.append(Section("slo", "SLOs", note="no SLO configured (slo.objectives)"))
    graph = doc["service_graph"]
    edges = graph["edges"]
    sections.append(
        Section(
            "service-graph",
            "Service graph",
            note=f"from {graph['source']}" + (f", rates over {graph['duration_s']:g} s" if edges else ""),
            figures=[_fig(F.service_graph(edges), "live-service-graph")] if edges else [],
            tables=[
                _table(
                    ["client", "server", "requests", "req/s", "failed", "error %"],
                    [
                        [
                            e["client"],
                            e["server"],
                            e["requests"],
                            e["requests_per_s"],
                            e["failed"],
                            100 * e["error_rate"],
                        ]
                        for e in edges
                    ],
                )
            ]
            if edges
            else [],
        )
    )
    figs, tables = _examples("live", doc["examples"])
    sections.append(Section("examples", "Kept traces", figures=figs, tables=tables))
    return _page("tailsift report", doc.get("subtitle", ""), doc, sections)


# ---------------------------------------------------------------------------------------------
# simulation


def _kept_of(row: dict) -> str:
    return f"{row.get('kept', 0):,}/{row.get('traces', 0):,}"


def render_simulation(doc: dict) -> str:
    configs = doc["configs"]
    names = [c["name"] for c in configs]
    inp = doc["input"]
    sections = []
    rows = [
        ("traces seen", "traces_seen"),
        ("spans seen", "spans_seen"),
        ("kept traces", "kept_traces"),
        ("kept spans", "kept_spans"),
        ("kept bytes", "kept_bytes"),
        ("kept spans/s", "kept_spans_per_s"),
        ("kept bytes/s", "kept_bytes_per_s"),
        ("Σ adjusted count", "adjusted_count_sum"),
    ]
    table = [[label, *(c[key] for c in configs)] for label, key in rows]
    # figures `tailsift simulate` may add beyond the agreed schema, shown when present
    if any("undecided" in c for c in configs):
        table.append(["undecided at the end of the input", *(c.get("undecided", 0) for c in configs)])
    if any(c.get("dead_lettered") for c in configs):
        table.append(["dead-lettered", *(sum((c.get("dead_lettered") or {}).values()) for c in configs)])
    summary = _table(["figure", *names], table)
    span_s = max(0, inp["last_event_ms"] - inp["first_event_ms"]) / 1000
    sections.append(
        Section(
            "summary",
            "Per config",
            note=f"input: {inp['source']}, {inp['messages']:,} messages, {inp['spans']:,} spans over {span_s:,.1f} s "
            "of event time"
            + "".join(f", {inp[k]:,} {k.replace('_', ' ')}" for k in ("invalid_messages", "late_spans") if inp.get(k)),
            tables=[summary],
        )
    )
    width = F.bucket_seconds(configs[0]["timeline"]) if configs else 1.0
    sections.append(
        Section(
            "timeline",
            "Timeline",
            figures=[_fig(F.throughput({c["name"]: c["timeline"] for c in configs}, width), "sim-throughput")],
        )
    )
    colors = F.policy_colors(p for c in configs for p in c["keep_share_by_policy"])
    sections.append(
        Section(
            "keep-share",
            "Keep share by policy",
            figures=[
                _fig(F.keep_share_by_policy({c["name"]: c["keep_share_by_policy"] for c in configs}), "sim-share")
            ],
        )
    )
    sections.append(
        Section(
            "keep-share-time",
            "Keep share by policy over time",
            figures=[
                _fig(F.keep_share_over_time(c["timeline"], f"{c['name']}", colors), f"sim-share-{i}")
                for i, c in enumerate(configs)
            ],
            columns=max(1, len(configs)),  # the configs side by side
        )
    )
    services = sorted({s for c in configs for s in c["per_service"]})
    sections.append(
        Section(
            "per-service",
            "Per-service keep rates",
            figures=[_fig(F.per_service_keep_rate({c["name"]: c["per_service"] for c in configs}), "sim-per-service")],
            tables=[
                _table(
                    ["service", *(f"{n} kept/traces" for n in names)],
                    [[s] + [_kept_of(c["per_service"].get(s, {})) for c in configs] for s in services],
                )
            ],
        )
    )
    recall_rows = []
    for c in configs:
        r = c["recall"]
        slow = sorted(r.get("slow", {}).items(), key=lambda kv: float(kv[0]))
        parts = [("error", r.get("error"))] + [(f"slow > {t} ms", p) for t, p in slow]
        for label, p in parts:
            if p is not None:
                recall_rows.append(
                    [c["name"], label, p["seen"], p["kept"], 100 * p["kept"] / p["seen"] if p["seen"] else 100.0]
                )
    sections.append(
        Section(
            "recall",
            "Recall",
            figures=[_fig(F.recall({c["name"]: c["recall"] for c in configs}), "sim-recall")],
            tables=[_table(["config", "traces", "seen", "kept", "recall %"], recall_rows)],
        )
    )
    diff = doc.get("diff")
    if diff is not None:
        cols = ["trace_id", "root_service", "root_operation", "policy", "reason"]
        sections.append(
            Section(
                "diff",
                "What changes",
                note=f"{diff.get('more', 0):,} more not listed" if diff.get("more") else "",
                tables=[
                    _table(
                        cols, [[d.get(k, "") for k in cols] for d in diff["only_candidate"]], "kept only by candidate"
                    ),
                    _table(cols, [[d.get(k, "") for k in cols] for d in diff["only_current"]], "kept only by current"),
                ],
            )
        )
    for i, c in enumerate(configs):
        figs, tables = _examples(f"sim-{i}", c["examples"])
        sections.append(Section(f"examples-{i}", f"Example kept traces ({c['name']})", figures=figs, tables=tables))
    return _page("tailsift simulate", " vs ".join(names), doc, sections)
