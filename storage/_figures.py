"""The report's figures, drawn with plotly from data frames (no torch), and their small HTML helpers.

Every figure is built from the candidates' DataFrame (:func:`storage.candidates_frame`)
or from data frames that ``search`` computes with the model (:class:`ReportExtras`:
the plans' per-layer structure, the base model's filter norms, the run's config and
versions). The page that holds them is :mod:`storage._html`; its sections are the
panels of :mod:`storage._panels`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spaces import Budget, Cost, Status

if TYPE_CHECKING:
    from storage._schema import StudyRecord

__all__ = [
    "FIGURE_IDS",
    "ReportExtras",
    "filters_figure",
    "front_figure",
    "history_figures",
    "public_url",
    "structure_figure",
]

FIGURE_IDS = ("pt-front", "pt-structure", "pt-filters", "pt-best", "pt-phases", "pt-outcomes")
_COSTS = (("macs", "MACs"), ("params", "parameters"), ("bytes", "bytes"), ("latency_ms", "latency (ms, batch 1)"))
_GREY, _LIGHT, _BLUE, _RED, _GREEN = "#9e9e9e", "#d0d0d0", "#1f77b4", "#d62728", "#2ca02c"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass(frozen=True)
class ReportExtras:
    """What only the model can tell, as data frames (built by ``search``, which may import torch).

    ``structure``: one row per plan and unit — columns ``plan`` (label), ``what``
    (what a plan dimension keeps: ``"kept channels"`` per group, ``"rank"`` per
    factorizable layer, ...; one panel each, in order of appearance), ``unit``,
    ``kept``, ``total``, ``fraction``. ``filters``: one row per output filter of
    the base model's pruned layers — ``layer``, ``filter``, ``l1``, ``pruned`` —
    for the front member ``filters_of``. ``reproducibility``: label -> value
    (``config`` as TOML or JSON text). ``notes``: section id -> why it is empty.
    """

    structure: pd.DataFrame | None = None
    filters: pd.DataFrame | None = None
    filters_of: str | None = None
    reproducibility: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def public_url(url: str) -> str:
    """A store URL without user name or password (for pages people pass around)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u._replace(username=None, password=None).render_as_string(hide_password=False)  # set() keeps None


def fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None or (isinstance(v, float) and pd.isna(v)) else format(v, spec)


def _hover(r: pd.Series, base: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        return f" ({100 * r[key] / base[key]:.1f}%)" if pd.notna(r[key]) and base.get(key) else ""

    lines = [
        f"<b>trial {int(r['trial']) if pd.notna(r['trial']) else '-'}</b> "
        f"({r['status']}, {r['kind'] if isinstance(r['kind'], str) else '-'})",
        f"validation accuracy {fmt(r['accuracy'], '.4f')}"
        + (f" (rung {int(r['rung'])}, {int(r['rung_steps'])} steps)" if pd.notna(r["rung_steps"]) else ""),
    ]
    if pd.notna(r["test_accuracy"]):
        lines.append(f"test accuracy {r['test_accuracy']:.4f}")
    lines += [
        f"MACs {fmt(r['macs'])}{pct('macs')}",
        f"params {fmt(r['params'])}{pct('params')}",
        f"bytes {fmt(r['bytes'])}{pct('bytes')}",
    ]
    if pd.notna(r["latency_ms"]):
        measured = f", measured {r['measured_ms']:.2f} ms" if pd.notna(r.get("measured_ms")) else ""
        lines.append(f"latency {r['latency_ms']:.2f} ms{measured}")
    lines.append(html.escape(str(r["plan"])))
    return "<br>".join(lines)


def _marker_groups(scored: pd.DataFrame) -> list[tuple[str, pd.Series, str, str, int]]:
    """The front figure's marker groups: (legend name, row mask, colour, symbol, size)."""
    done = scored["status"] == Status.COMPLETE
    over = scored["over_cap"].astype(bool) if "over_cap" in scored else pd.Series(False, index=scored.index)
    groups = [
        ("Pareto front (validation)", done & scored["on_front"], _BLUE, "circle", 10),
        ("dominated", done & ~scored["on_front"] & ~over, _GREY, "circle", 8),
        ("early-stopped (last accuracy)", scored["status"] == Status.PRUNED, _LIGHT, "x", 8),
    ]
    if over.any():  # predicted within the latency cap, measured over it: not within the budget
        groups.append(("measured over the latency cap", done & over, _RED, "x-open", 10))
    return groups


def front_figure(df: pd.DataFrame, info: StudyRecord) -> go.Figure:
    """Validation accuracy against each cost: front in colour, dominated and early-stopped grey, test apart."""
    costs = [(k, t) for k, t in _COSTS if k != "latency_ms" or df["latency_ms"].notna().any()]
    fig = make_subplots(rows=1, cols=len(costs), shared_yaxes=True, subplot_titles=[t for _, t in costs])
    base = info.base_cost
    analytic = {k: v for k, v in info.budget.items() if k in ("macs", "params", "bytes")}  # latency: predicted
    base_cost = Cost(**{k: base.get(k, 0) for k in ("macs", "params", "bytes")})
    caps = Budget.from_dict(analytic).absolute(base_cost) if analytic else {}
    scored = df[df["accuracy"].notna() & df["status"].isin([Status.COMPLETE.value, Status.PRUNED.value])]
    groups = _marker_groups(scored)
    for col, (key, title) in enumerate(costs, start=1):
        first = col == 1
        for name, mask, color, symbol, size in groups:
            part = scored[mask].sort_values(key)
            fig.add_trace(
                go.Scatter(
                    x=part[key], y=part["accuracy"], mode="lines+markers" if name.startswith("Pareto") else "markers",
                    name=name, legendgroup=name, showlegend=first,
                    marker={"color": color, "symbol": symbol, "size": size}, line={"color": color, "shape": "hv"},
                    hovertext=[_hover(r, base) for _, r in part.iterrows()], hoverinfo="text",
                    meta={"candidates": [int(c) for c in part["candidate"]], "role": "candidates"},
                ),
                row=1, col=col,
            )  # fmt: skip
        tested = scored[scored["test_accuracy"].notna()]
        if len(tested):
            fig.add_trace(
                go.Scatter(
                    x=tested[key], y=tested["test_accuracy"], mode="markers", name="test accuracy (finalized)",
                    legendgroup="test", showlegend=first, marker={"color": _GREEN, "symbol": "diamond", "size": 9},
                    hovertext=[_hover(r, base) for _, r in tested.iterrows()], hoverinfo="text",
                    meta={"role": "test"},
                ),
                row=1, col=col,
            )  # fmt: skip
        if key in base and info.base_accuracy is not None:
            fig.add_trace(
                go.Scatter(
                    x=[base[key]], y=[info.base_accuracy], mode="markers", name="uncompressed model",
                    legendgroup="base", showlegend=first, marker={"color": "black", "symbol": "star", "size": 14},
                    hovertext=[f"uncompressed model<br>validation accuracy {info.base_accuracy:.4f}<br>"
                               f"{title} {base[key]:,.0f}"], hoverinfo="text", meta={"role": "base"},
                ),
                row=1, col=col,
            )  # fmt: skip
        if key in caps:
            fig.add_vline(
                x=caps[key], line={"color": _RED, "dash": "dash"}, row=1, col=col,
                annotation_text=f"budget {info.budget[key]}", annotation_position="top left",
            )  # fmt: skip
        fig.update_xaxes(title_text=title, row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_layout(height=430, margin={"t": 60, "b": 50}, legend={"orientation": "h", "y": -0.25})
    return fig


def structure_figure(structure: pd.DataFrame) -> go.Figure:
    whats = list(dict.fromkeys(structure["what"]))  # one panel per plan dimension, in the dimensions' order
    titles = [f"{w} (fraction of the base model's)" for w in whats]
    fig = make_subplots(
        rows=len(whats), cols=1, subplot_titles=titles, vertical_spacing=min(0.25, 0.5 / max(len(whats), 1))
    )
    plans = list(dict.fromkeys(structure["plan"]))
    for row, what in enumerate(whats, start=1):
        part = structure[structure["what"] == what]
        units = list(dict.fromkeys(part["unit"]))
        grid = part.pivot(index="plan", columns="unit", values="fraction").reindex(index=plans, columns=units)
        kept = part.pivot(index="plan", columns="unit", values="kept").reindex(index=plans, columns=units)
        total = part.pivot(index="plan", columns="unit", values="total").reindex(index=plans, columns=units)
        fig.add_trace(
            go.Heatmap(
                z=grid.values, x=units, y=plans, zmin=0, zmax=1, colorscale="Viridis", showscale=row == 1,
                customdata=np.dstack([kept.values, total.values]),
                hovertemplate="%{y}<br>%{x}<br>" + what + " %{customdata[0]} of %{customdata[1]} (%{z:.0%})"
                "<extra></extra>",
            ),
            row=row, col=1,
        )  # fmt: skip
        fig.update_xaxes(tickangle=45, tickfont={"size": 9}, row=row, col=1)
    fig.update_layout(height=len(whats) * (160 + 32 * len(plans)), margin={"t": 40, "l": 160})
    return fig


def filters_figure(filters: pd.DataFrame, member: str | None) -> go.Figure:
    fig = go.Figure()
    layers = list(dict.fromkeys(filters["layer"]))
    pos = {name: i for i, name in enumerate(layers)}
    for state, color in (("kept", _BLUE), ("pruned", _RED)):
        part = filters[filters["pruned"] == (state == "pruned")]
        jitter = ((part["filter"] * 0.618) % 1 - 0.5) * 0.6  # deterministic spread within a layer's column
        fig.add_trace(
            go.Scatter(
                x=part["layer"].map(pos) + jitter, y=part["l1"], mode="markers", name=f"{state} filters",
                marker={"color": color, "size": 5, "opacity": 0.8},
                customdata=part[["layer", "filter"]].values,
                hovertemplate="%{customdata[0]} filter %{customdata[1]}<br>L1 norm %{y:.3f}<extra>" + state
                + "</extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(tickvals=list(range(len(layers))), ticktext=layers, tickangle=45, tickfont={"size": 9})
    fig.update_yaxes(title_text="filter L1 norm (base model)")
    fig.update_layout(title=f"filters pruned by {member}" if member else None, height=460, margin={"t": 50})
    return fig


def history_figures(df: pd.DataFrame, base_accuracy: float | None) -> tuple[go.Figure, go.Figure, go.Figure]:
    order = df.sort_values("candidate").reset_index(drop=True)
    n = pd.Series(range(1, len(order) + 1))
    best = order["accuracy"].where(order["status"] == Status.COMPLETE).cummax()
    fig1 = go.Figure()
    for status, color in ((Status.COMPLETE, _BLUE), (Status.PRUNED, _LIGHT)):
        mask = (order["status"] == status) & order["accuracy"].notna()
        fig1.add_trace(go.Scatter(x=n[mask], y=order["accuracy"][mask], mode="markers", name=f"{status.value}",
                                  marker={"color": color, "size": 8}, text=order["plan"][mask]))  # fmt: skip
    fig1.add_trace(go.Scatter(x=n, y=best, mode="lines", name="best so far", line={"color": _GREEN, "shape": "hv"}))
    if base_accuracy is not None:
        fig1.add_hline(y=base_accuracy, line={"dash": "dot"}, annotation_text="uncompressed")
    fig1.update_layout(xaxis_title="candidate (in order)", yaxis_title="validation accuracy", height=380)
    fig2 = go.Figure()
    for phase in ("apply", "train", "eval", "other"):
        fig2.add_trace(go.Bar(x=n, y=order[f"t_{phase}"], name=phase))
    missing = order[[f"t_{p}" for p in ("apply", "train", "eval", "other")]].isna().all(axis=1)
    if missing.any():
        fig2.add_trace(go.Bar(x=n[missing], y=order["seconds"][missing], name="total (phases not recorded)"))
    fig2.update_layout(barmode="stack", xaxis_title="candidate (in order)", yaxis_title="seconds", height=380)
    counts = order["status"].value_counts()
    fig3 = go.Figure(go.Bar(x=list(counts.index), y=list(counts.values), marker={"color": _BLUE}))
    fig3.update_layout(xaxis_title="status", yaxis_title="candidates", height=300)
    return fig1, fig2, fig3


def div(fig: go.Figure, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG))


def table(df: pd.DataFrame) -> str:
    df = df.astype(object).where(df.notna(), None).fillna("-")
    return str(df.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0, classes="pt-table"))


def note(text: str) -> str:
    return f'<p class="pt-note">{html.escape(text)}</p>'
