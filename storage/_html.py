"""``report.html``: a study's figures, drawn with plotly from data frames, on one self-contained page.

Every figure is built from the candidates' DataFrame (:func:`storage.candidates_frame`)
or from data frames that ``search`` computes with the model (:class:`ReportExtras`:
the plans' per-layer structure, the base model's filter norms, the run's config and
versions), so this module needs no torch. The page inlines plotly.js (or names
one URL for it, as the service does) and loads nothing else: no CDN, no fonts,
no network at view time.

Sections (ids): ``front`` (accuracy against each cost), ``structure`` (kept
channels and ranks per layer of the front's plans and the seed plans),
``filters`` (filter L1 norms of the base model, pruned ones marked, for one
front member), ``history`` (best so far, seconds per phase, failures),
``reproducibility``.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spaces import Budget, Cost, Status

if TYPE_CHECKING:
    from storage._schema import StudyRecord
    from storage._store import StudyStore

__all__ = ["FIGURE_IDS", "ReportExtras", "front_figure", "public_url", "render_report"]

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


def _fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None or (isinstance(v, float) and pd.isna(v)) else format(v, spec)


def _hover(r: pd.Series, base: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        return f" ({100 * r[key] / base[key]:.1f}%)" if pd.notna(r[key]) and base.get(key) else ""

    lines = [
        f"<b>trial {int(r['trial']) if pd.notna(r['trial']) else '-'}</b> "
        f"({r['status']}, {r['kind'] if isinstance(r['kind'], str) else '-'})",
        f"validation accuracy {_fmt(r['accuracy'], '.4f')}"
        + (f" (rung {int(r['rung'])}, {int(r['rung_steps'])} steps)" if pd.notna(r["rung_steps"]) else ""),
    ]
    if pd.notna(r["test_accuracy"]):
        lines.append(f"test accuracy {r['test_accuracy']:.4f}")
    lines += [
        f"MACs {_fmt(r['macs'])}{pct('macs')}",
        f"params {_fmt(r['params'])}{pct('params')}",
        f"bytes {_fmt(r['bytes'])}{pct('bytes')}",
    ]
    if pd.notna(r["latency_ms"]):
        lines.append(f"latency {r['latency_ms']:.2f} ms")
    lines.append(html.escape(str(r["plan"])))
    return "<br>".join(lines)


def front_figure(df: pd.DataFrame, info: StudyRecord) -> go.Figure:
    """Validation accuracy against each cost: front in colour, dominated and early-stopped grey, test apart."""
    costs = [(k, t) for k, t in _COSTS if k != "latency_ms" or df["latency_ms"].notna().any()]
    fig = make_subplots(rows=1, cols=len(costs), shared_yaxes=True, subplot_titles=[t for _, t in costs])
    base = info.base_cost
    caps = Budget.from_dict(info.budget).absolute(Cost(**{k: base.get(k, 0) for k in ("macs", "params", "bytes")}))
    scored = df[df["accuracy"].notna() & df["status"].isin([Status.COMPLETE.value, Status.PRUNED.value])]
    groups = [
        ("Pareto front (validation)", (scored["status"] == Status.COMPLETE) & scored["on_front"], _BLUE, "circle", 10),
        ("dominated", (scored["status"] == Status.COMPLETE) & ~scored["on_front"], _GREY, "circle", 8),
        ("early-stopped (last accuracy)", scored["status"] == Status.PRUNED, _LIGHT, "x", 8),
    ]
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


def _structure_figure(structure: pd.DataFrame) -> go.Figure:
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


def _filters_figure(filters: pd.DataFrame, member: str | None) -> go.Figure:
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


def _history_figures(df: pd.DataFrame, base_accuracy: float | None) -> tuple[go.Figure, go.Figure, go.Figure]:
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


def _div(fig: go.Figure, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG))


def _table(df: pd.DataFrame) -> str:
    df = df.astype(object).where(df.notna(), None).fillna("-")
    return str(df.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0, classes="pt-table"))


def _note(text: str) -> str:
    return f'<p class="pt-note">{html.escape(text)}</p>'


def render_report(
    store: StudyStore,
    info: StudyRecord,
    df: pd.DataFrame,
    extras: ReportExtras | None = None,
    *,
    plotlyjs: str | None = None,
    live: str | None = None,
) -> str:
    """The page's HTML. ``plotlyjs``: a URL to load plotly.js from (default: inlined); ``live``: a URL
    of the front figure's JSON that the page fetches every few seconds to redraw the front without reload.
    """
    from plotly.offline import get_plotlyjs

    ex = extras or ReportExtras()
    front = df[df["on_front"]].sort_values("macs")
    sections: list[tuple[str, str, str]] = []
    shown = ["trial", "kind", "accuracy", "rung_steps", "test_accuracy", "macs_pct", "params_pct", "latency_ms", "plan"]
    sections.append(("front", f"Pareto front ({len(front)} of {len(df)} candidates)",
                     _div(front_figure(df, info), "pt-front") + _table(front[shown])))  # fmt: skip
    if ex.structure is not None and len(ex.structure):
        body = _div(_structure_figure(ex.structure), "pt-structure")
    else:
        body = _note(ex.notes.get("structure", "no plan to show"))
    sections.append(("structure", "Per-layer structure of the plans", body))
    if ex.filters is not None and len(ex.filters):
        body = _div(_filters_figure(ex.filters, ex.filters_of), "pt-filters")
    else:
        body = _note(ex.notes.get("filters", "no front member yet"))
    sections.append(("filters", f"Filter L1 norms, pruned filters of {ex.filters_of or '-'} marked", body))
    best, phases, outcomes = _history_figures(df, info.base_accuracy)
    failed = df[df["status"].isin([Status.FAIL.value, Status.PRUNED.value])]
    reasons = (
        _table(failed[["trial", "status", "attempts", "error"]])
        if len(failed)
        else _note("no candidate failed or was stopped early")
    )
    sections.append(("history", "Search history",
                     "<h3>Best so far</h3>" + _div(best, "pt-best") + "<h3>Seconds per candidate, by phase</h3>"
                     + _div(phases, "pt-phases") + "<h3>Outcomes, failures and their reasons</h3>"
                     + _div(outcomes, "pt-outcomes") + reasons))  # fmt: skip
    repro = {
        "study": info.name, "model": info.model_spec, "data": info.data_spec, "budget": json.dumps(info.budget),
        "base accuracy (validation)": _fmt(info.base_accuracy, ".4f"),
        "base cost": ", ".join(f"{k} {v:,}" for k, v in info.base_cost.items()),
        "study created": info.created.isoformat(timespec="seconds"), "store": public_url(store.url),
        "report written": datetime.now(UTC).isoformat(timespec="seconds"), **ex.reproducibility,
    }  # fmt: skip
    config = repro.pop("config", None)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in repro.items())
    body = f'<table class="pt-table pt-repro">{rows}</table>'
    body += f"<details><summary>config</summary><pre>{html.escape(str(config))}</pre></details>" if config else ""
    sections.append(("reproducibility", "Reproducibility", body))
    nav = " · ".join(f'<a href="#{sid}">{html.escape(title.split(" (")[0])}</a>' for sid, title, _ in sections)
    parts = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{b}</section>' for sid, t, b in sections)
    script = f'<script src="{html.escape(plotlyjs)}"></script>' if plotlyjs else f"<script>{get_plotlyjs()}</script>"
    poll = "" if live is None else _LIVE.replace("__URL__", json.dumps(live))
    title = html.escape(f"PruneTune study {info.name}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style>{script}</head><body><h1>{title}</h1>"
        f'<p class="pt-sub">{html.escape(info.model_spec)} on {html.escape(info.data_spec)}, budget '
        f'{html.escape(json.dumps(info.budget))} · <span id="pt-count">{len(df)}</span> candidates'
        f"{' · live' if live else ''}</p><nav>{nav}</nav>{parts}{poll}</body></html>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.pt-sub{color:#666;margin-top:0}nav a{margin:0 .2rem}.pt-note{color:#666;font-style:italic}
.pt-table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
.pt-table td,.pt-table th{border-bottom:1px solid #eee;padding:.2rem .6rem;text-align:left;vertical-align:top}
pre{background:#f6f6f6;padding:.8rem;overflow:auto;font-size:.8rem}
"""

_LIVE = """<script>
(function(){
  async function tick(){
    try{
      const r = await fetch(__URL__, {credentials: "same-origin", cache: "no-store"});
      if(!r.ok) return;
      const fig = await r.json();
      Plotly.react("pt-front", fig.figure.data, fig.figure.layout);
      document.getElementById("pt-count").textContent = fig.candidates;
    }catch(e){ /* the server went away: keep the last picture */ }
  }
  setInterval(tick, 3000);
})();
</script>"""
