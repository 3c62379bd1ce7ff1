"""Plotly figures from a report document (a plain dict: see ``pipeline.htmlreport``).

Pure functions of the document, no Kafka: the unit tests build documents by hand. Every chart is a
Plotly trace type (scatter, bar, sankey); nothing is drawn by hand, so the page needs only the
inlined plotly.js bundle."""

from __future__ import annotations

from datetime import UTC, datetime

import plotly.graph_objects as go
from plotly.colors import qualitative

ERROR_COLOR = "#d62728"
OK_COLOR = "#1f77b4"
PLOTLY_PALETTE = qualitative.Plotly
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 40}, "height": 340}


def _time(t_ms: int) -> str:
    """Plotly reads ISO strings as dates; UTC, millisecond precision."""
    return datetime.fromtimestamp(t_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def bucket_seconds(timeline: list[dict], default: float = 1.0) -> float:
    """Width of the timeline's buckets: the smallest step between two of them."""
    steps = [b["t_ms"] - a["t_ms"] for a, b in zip(timeline, timeline[1:]) if b["t_ms"] > a["t_ms"]]
    return min(steps) / 1000 if steps else default


def _layout(title: str, **extra) -> dict:
    return {**_LAYOUT, "title": {"text": title}, **extra}


def throughput(timelines: dict[str, list[dict]], width_s: float) -> go.Figure:
    """Input vs kept spans/s per bucket; one kept line per config (one for the live report). The
    input is the same for every config of a simulation, so it is drawn once."""
    fig = go.Figure()
    first = next(iter(timelines.values()), [])
    fig.add_trace(
        go.Scatter(
            x=[_time(b["t_ms"]) for b in first],
            y=[b["input_spans"] / width_s for b in first],
            name="input spans/s",
            mode="lines",
            line={"color": "#7f7f7f"},
        )
    )
    for name, timeline in timelines.items():
        fig.add_trace(
            go.Scatter(
                x=[_time(b["t_ms"]) for b in timeline],
                y=[b["kept_spans"] / width_s for b in timeline],
                name=f"kept spans/s ({name})" if len(timelines) > 1 else "kept spans/s",
                mode="lines",
            )
        )
    return fig.update_layout(_layout("Input vs kept spans per second", yaxis_title="spans/s"))


def policy_colors(policies) -> dict[str, str]:
    """One colour per policy name, the same in every chart of a page (two configs side by side)."""
    palette = PLOTLY_PALETTE
    return {p: palette[i % len(palette)] for i, p in enumerate(sorted(set(policies)))}


def keep_share_over_time(timeline: list[dict], title: str, colors: dict[str, str] | None = None) -> go.Figure:
    """Kept traces per deciding policy per bucket, stacked."""
    policies = sorted({p for b in timeline for p in b["kept_by_policy"]})
    colors = colors or policy_colors(policies)
    fig = go.Figure()
    for policy in policies:
        fig.add_trace(
            go.Bar(
                x=[_time(b["t_ms"]) for b in timeline],
                y=[b["kept_by_policy"].get(policy, 0) for b in timeline],
                name=policy,
                marker_color=colors.get(policy),
            )
        )
    return fig.update_layout(_layout(title, barmode="stack", yaxis_title="kept traces"))


def keep_share_by_policy(shares: dict[str, dict[str, int]]) -> go.Figure:
    """Kept traces by deciding policy, one bar group per config."""
    policies = sorted({p for s in shares.values() for p in s})
    fig = go.Figure()
    for name, share in shares.items():
        fig.add_trace(go.Bar(x=policies, y=[share.get(p, 0) for p in policies], name=name))
    return fig.update_layout(_layout("Kept traces by deciding policy", barmode="group", yaxis_title="kept traces"))


def latency_over_time(series: dict[str, list[dict]]) -> go.Figure:
    """p50/p90/p99 per service per window; p90/p99 start hidden (click the legend) so the page
    opens readable with many services."""
    fig = go.Figure()
    for service, points in sorted(series.items()):
        for q, dash in (("p50", "solid"), ("p90", "dash"), ("p99", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=[_time(p["t_ms"]) for p in points],
                    y=[p[q] for p in points],
                    name=f"{service} {q}",
                    legendgroup=service,
                    mode="lines",
                    line={"dash": dash},
                    visible=True if q == "p99" else "legendonly",
                )
            )
    return fig.update_layout(
        _layout("Latency per service (merged SLI sketches, every span)", yaxis_title="ms", yaxis_type="log", height=420)
    )


def error_rate_over_time(series: dict[str, list[dict]]) -> go.Figure:
    fig = go.Figure()
    for service, points in sorted(series.items()):
        fig.add_trace(
            go.Scatter(
                x=[_time(p["t_ms"]) for p in points],
                y=[100 * p["errors"] / p["spans"] if p["spans"] else 0 for p in points],
                name=service,
                mode="lines",
            )
        )
    return fig.update_layout(_layout("Error rate per service (every span)", yaxis_title="% of spans", height=380))


def slo_budget(objectives: list[dict]) -> go.Figure:
    names = [o["slo"] for o in objectives]
    remaining = [100 * o["budget_remaining"] for o in objectives]
    colors = [ERROR_COLOR if r < 0 else OK_COLOR for r in remaining]
    fig = go.Figure(go.Bar(x=remaining, y=names, orientation="h", marker_color=colors, name="budget remaining"))
    return fig.update_layout(
        _layout(
            "SLO error budget remaining", xaxis_title="% of the period's budget", height=120 + 40 * max(1, len(names))
        )
    )


def slo_burn_rates(objectives: list[dict]) -> go.Figure:
    windows = sorted({w for o in objectives for w in o["burn_rates"]}, key=_window_seconds)
    fig = go.Figure()
    for o in objectives:
        fig.add_trace(go.Bar(x=windows, y=[o["burn_rates"].get(w, 0.0) for w in windows], name=o["slo"]))
    return fig.update_layout(_layout("SLO burn rate per alert window", barmode="group", yaxis_title="× budget rate"))


def _window_seconds(label: str) -> int:
    return int(label[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(label[-1], 1)


def service_graph(edges: list[dict]) -> go.Figure:
    """Edges as a Sankey diagram: link width = requests/s, colour = error share."""
    nodes = sorted({e["client"] for e in edges} | {e["server"] for e in edges})
    index = {n: i for i, n in enumerate(nodes)}

    def color(rate: float) -> str:
        red = min(1.0, rate * 10)  # 10 % errors or more = full red
        return f"rgba({int(60 + 180 * red)},{int(120 * (1 - red))},{int(200 * (1 - red))},0.45)"

    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={"label": nodes, "pad": 18, "thickness": 14},
            link={
                "source": [index[e["client"]] for e in edges],
                "target": [index[e["server"]] for e in edges],
                "value": [e["requests_per_s"] for e in edges],
                "color": [color(e["error_rate"]) for e in edges],
                "customdata": [[e["requests"], e["failed"], 100 * e["error_rate"]] for e in edges],
                "hovertemplate": "%{source.label} → %{target.label}<br>%{value:.2f} req/s, %{customdata[0]} requests"
                "<br>%{customdata[1]} failed (%{customdata[2]:.2f} %)<extra></extra>",
            },
        )
    )
    return fig.update_layout(_layout("Service graph (every trace, before sampling)", height=460))


def per_service_keep_rate(per_service: dict[str, dict[str, dict[str, int]]]) -> go.Figure:
    """Kept share of traces per service, one bar group per config."""
    services = sorted({s for ps in per_service.values() for s in ps})
    fig = go.Figure()
    for name, ps in per_service.items():
        fig.add_trace(
            go.Bar(
                x=services,
                y=[100 * ps[s]["kept"] / ps[s]["traces"] if s in ps and ps[s]["traces"] else 0 for s in services],
                name=name,
            )
        )
    return fig.update_layout(_layout("Kept share of traces per service", barmode="group", yaxis_title="% kept"))


def recall(recalls: dict[str, dict]) -> go.Figure:
    """Error recall and slow recall (one bar per SLO threshold), one bar group per config."""
    fig = go.Figure()
    for name, r in recalls.items():
        labels, values = [], []
        for label, part in [("error", r.get("error"))] + [
            (f"slow > {t} ms", p) for t, p in sorted(r.get("slow", {}).items(), key=lambda kv: float(kv[0]))
        ]:
            if part is None:
                continue
            labels.append(label)
            values.append(100 * part["kept"] / part["seen"] if part["seen"] else 100.0)
        fig.add_trace(go.Bar(x=labels, y=values, name=name))
    return fig.update_layout(
        _layout("Recall: share of interesting traces kept", barmode="group", yaxis_title="% kept", yaxis_range=[0, 105])
    )


def waterfall(example: dict) -> go.Figure:
    """One trace as a waterfall: a horizontal bar per span (parents above children), from the
    trace's first start, red for ERROR; the hover shows the span's sampling attributes."""
    spans = ordered_spans(example["spans"])
    t0 = min((s["start_ms"] for s, _ in spans), default=0.0)
    labels = [f"{i:>3} {'· ' * depth}{s['service']}: {s['name']}" for i, (s, depth) in enumerate(spans)]
    hover = [
        "<br>".join(
            [f"{s['service']} {s['name']}", f"{s['duration_ms']:.2f} ms, {s['status']}"]
            + [f"{k} = {v}" for k, v in sorted(s.get("sampling", {}).items())]
        )
        for s, _ in spans
    ]
    fig = go.Figure(
        go.Bar(
            y=labels,
            x=[max(s["duration_ms"], 0.001) for s, _ in spans],
            base=[s["start_ms"] - t0 for s, _ in spans],
            orientation="h",
            marker_color=[ERROR_COLOR if s["status"] == "ERROR" else OK_COLOR for s, _ in spans],
            hovertext=hover,
            hoverinfo="text",
        )
    )
    return fig.update_layout(
        _layout(
            f"{example['why']}: trace {example['trace_id'][:16]}… kept by {example['policy']}",
            xaxis_title="ms since the trace's first span",
            yaxis={"autorange": "reversed", "automargin": True},
            height=120 + 22 * max(1, len(spans)),
            showlegend=False,
        )
    )


def ordered_spans(spans: list[dict]) -> list[tuple[dict, int]]:
    """Depth-first from the roots (spans whose parent is absent), children by start time; spans in
    a parent cycle (hostile input) are appended at depth 0 rather than lost."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict]] = {}
    for s in spans:
        parent = s.get("parent_span_id")
        children.setdefault(parent if parent in ids else None, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: (s["start_ms"], s["span_id"]))
    out: list[tuple[dict, int]] = []
    seen: set[str] = set()
    stack = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        if span["span_id"] in seen:
            continue
        seen.add(span["span_id"])
        out.append((span, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(span["span_id"], [])))
    out.extend((s, 0) for s in spans if s["span_id"] not in seen)
    return out
