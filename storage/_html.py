"""``report.html``: a study's panels (:mod:`storage._panels`) on one self-contained page.

The page inlines plotly.js (or names one URL for it, as the service does) and
loads nothing else: no CDN, no fonts, no network at view time. Sections, in
the registry's order: ``front`` (accuracy against each cost), ``structure``
(what each plan dimension keeps, per layer, of the front's plans and the seed
plans), ``filters`` (filter L1 norms of the base model, pruned ones marked, for
one front member), ``history`` (best so far, seconds per phase, failures),
``reproducibility``; a registered panel adds its own.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from storage._figures import FIGURE_IDS, ReportExtras
from storage._panels import ReportInput, panels

if TYPE_CHECKING:
    import pandas as pd

    from storage._schema import StudyRecord
    from storage._store import StudyStore

__all__ = ["FIGURE_IDS", "render_report"]


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
    from plotly.offline import get_plotlyjs  # heavy: the whole plotly.js bundle

    given = ReportInput(store, info, df, extras or ReportExtras())
    sections = [(p.id, p.title(given), p.body(given)) for p in panels()]
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
