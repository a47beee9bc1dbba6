"""The report of a language-model study: ``candidates.csv``, ``front.csv``, ``report.md`` and ``report.html``.

The page is self-contained, as the vision report (plotly.js inlined, nothing
loaded at view time): validation perplexity against memory (weights plus KV
cache), every candidate a point, the front joined by a line,
the study's pick starred (:func:`~search.tasks._decoder_view.pick_with_ties`: the least memory within the
noise of the lowest perplexity); then the front as a table, its ``pick`` column marking the pick ``*`` and
the plans within its noise ``≈``, and how the study was made.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from search.tasks._decoder_view import pick_with_ties, plan_summary

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from storage import StudyRecord, StudyStore

__all__ = ["decoder_frame", "decoder_page", "front_figure", "write_decoder_report"]

_COLUMNS = ["trial", "pick", "status", "kind", "perplexity", "rung_steps", "memory_pct", "memory", "weight_bytes",
            "kv_bytes", "params", "prefill_macs_per_token", "prefill_tps", "decode_tps", "seconds", "on_front",
            "plan", "summary"]  # fmt: skip


def decoder_frame(store: StudyStore, info: StudyRecord) -> pd.DataFrame:
    """One row per candidate (:data:`_COLUMNS`), smallest memory first."""
    import pandas as pd

    on_front = store.front(info.id)
    front, chosen = {r.id for r in on_front}, pick_with_ties(on_front)
    marks = {} if chosen is None else {**dict.fromkeys([*chosen.tied, chosen.best.id], "≈"), chosen.row.id: "*"}
    dense, groups = float(info.base_cost["memory"]), info.space_options.get("groups", {})
    rows = [
        {
            "trial": r.trial_number,
            "pick": marks.get(r.id, ""),
            "status": str(r.status),
            "kind": None if r.kind is None else str(r.kind),
            "perplexity": r.perplexity,
            "memory_pct": None if r.memory is None else 100 * r.memory / dense,
            "memory": r.memory,
            "weight_bytes": r.bytes,
            "kv_bytes": None if r.memory is None or r.bytes is None else r.memory - r.bytes,
            "params": r.params,
            "prefill_macs_per_token": r.macs,
            "prefill_tps": (r.device_latency or {}).get("prefill_tps"),  # evaluate.speed: predicted
            "decode_tps": (r.device_latency or {}).get("decode_tps"),
            "rung_steps": r.top_steps,
            "seconds": r.seconds,
            "on_front": r.id in front,
            "plan": r.plan,
            "summary": plan_summary(r.plan, groups),
        }
        for r in store.candidates(info.id)
    ]
    return pd.DataFrame(rows, columns=_COLUMNS).sort_values(["memory", "trial"], na_position="last")


def write_decoder_report(store: StudyStore, study: str, out: str | Path) -> list[Path]:
    """Write the four files of ``study`` into ``out`` (see the module docs); returns their paths."""
    info = store.study(study)
    df = decoder_frame(store, info)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "candidates.csv", out / "front.csv", out / "report.md", out / "report.html"]
    df.drop(columns=["summary"]).to_csv(paths[0], index=False)
    front = df[df["on_front"].astype(bool)]
    front.drop(columns=["summary"]).to_csv(paths[1], index=False)
    markdown = _shown(front).to_markdown(index=False, floatfmt=".4g") if len(front) else "(none)"
    paths[2].write_text("\n".join([*_head(info, df), "## Pareto front", "", markdown, ""]), encoding="utf-8")
    paths[3].write_text(decoder_page(store, info, df=df), encoding="utf-8")
    return paths


def _shown(front: pd.DataFrame) -> pd.DataFrame:
    return front[["trial", "pick", "perplexity", "rung_steps", "memory_pct", "weight_bytes", "kv_bytes", "summary"]]


def _head(info: StudyRecord, df: pd.DataFrame) -> list[str]:
    """The report's first lines: the study, the dense model, the counts, what the columns mean."""
    dense_ppl = info.space_options.get("dense")
    front = df[df["on_front"].astype(bool)]
    return [
        f"# PruneTune study `{info.name}` (language model)",
        "",
        f"- model `{info.model_spec}` on `{info.data_spec}`, budget {json.dumps(info.budget)}",
        f"- dense model: memory {info.base_cost['memory']:,.0f} bytes (weights plus KV cache), validation "
        f"perplexity {dense_ppl:.3f}"
        if dense_ppl is not None
        else "",
        f"- candidates: {len(df)}; front: {len(front)}",
        "",
        "`perplexity`: validation split (the search selects on it), after `rung_steps` recovery steps (the "
        "best few were recovered again, longer); `memory_pct`: weights plus KV cache, a share of the dense model's; "
        "`pick`: `*` the study's pick, the least memory within the noise of the lowest perplexity at the longest "
        "recovery; `≈` within that noise (under 2 paired standard errors on the same validation windows).",
        "",
    ]


def decoder_page(
    store: StudyStore, info: StudyRecord, *, df: pd.DataFrame | None = None, plotlyjs: str | None = None
) -> str:
    """``report.html``: the front figure and table on one page; ``plotlyjs``: a URL to load plotly.js from
    (the service's), else inlined (nothing loaded at view time)."""
    from plotly.offline import get_plotlyjs

    df = decoder_frame(store, info) if df is None else df
    head = _head(info, df)
    figure = front_figure(df, info.space_options.get("dense"))
    div = figure.to_html(full_html=False, include_plotlyjs=False, div_id="pt-front")
    front = _shown(df[df["on_front"].astype(bool)])
    table = front.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}", classes="pt-table")
    title = html.escape(f"PruneTune study {info.name}")
    body = "".join(f"<p>{html.escape(line.removeprefix('- '))}</p>" for line in head[2:5] if line)
    script = f'<script src="{html.escape(plotlyjs)}"></script>' if plotlyjs else f"<script>{get_plotlyjs()}</script>"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>{script}</head>'
        f"<body><h1>{title}</h1>{body}"
        f'<section id="front"><h2>Perplexity against memory</h2>{div}{table}</section></body></html>'
    )


def front_figure(df: pd.DataFrame, dense_ppl: float | None) -> go.Figure:
    """Every candidate (grey), the front (a line), the study's pick (a star)."""
    import plotly.graph_objects as go

    done = df[df["perplexity"].notna()]
    front = done[done["on_front"].astype(bool)]
    fig = go.Figure()
    fig.add_scatter(x=done["memory_pct"], y=done["perplexity"], mode="markers", name="candidates",
                    marker={"color": "#bbb"}, text=done["summary"])  # fmt: skip
    fig.add_scatter(x=front["memory_pct"], y=front["perplexity"], mode="lines+markers", name="front",
                    text=front["summary"])  # fmt: skip
    chosen = front[front["pick"] == "*"]
    if len(chosen):
        fig.add_scatter(x=chosen["memory_pct"], y=chosen["perplexity"], mode="markers", name="the pick",
                        marker={"symbol": "star", "size": 14})  # fmt: skip
    if dense_ppl is not None:
        fig.add_hline(y=dense_ppl, line_dash="dot", annotation_text="dense model")
    fig.update_layout(xaxis_title="memory, % of the dense model (weights + KV cache)",
                      yaxis_title="validation perplexity", template="plotly_white")  # fmt: skip
    return fig
