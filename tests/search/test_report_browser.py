"""The report of a real study, opened in a real browser (Debian's headless Chromium via Playwright): every plot
renders, nothing is fetched from the network, the console stays clean. Screenshots are taken every run; with
PRUNETUNE_SCREENSHOTS=1 they replace the README's pictures in docs/."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from search.cli import main
from storage._html import FIGURE_IDS
from tests.search.servers import CHROMIUM_ARGS, chromium

DOCS = Path(__file__).resolve().parents[2] / "docs"
_PLOTS = """() => Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].map(d => [d.id, {
    traces: d.data.length, svg: d.querySelectorAll('.main-svg').length,
    drawn: d.querySelectorAll('.point, .hm, .heatmaplayer image, .bars path').length}]))"""
_FRONT_POINTS = """() => document.getElementById('pt-front')._fullData
    .filter(t => t.xaxis === 'x' && t.meta && t.meta.role === 'candidates')
    .reduce((n, t) => n + t.x.length, 0)"""


def test_the_report_of_a_real_study_renders_every_plot_offline(existing: Path, tmp_path: Path) -> None:
    from playwright.sync_api import Route, sync_playwright

    exe = chromium()
    shots = DOCS if os.environ.get("PRUNETUNE_SCREENSHOTS") else tmp_path / "shots"
    out = tmp_path / "report"
    assert main(["report", str(existing), "--out", str(out)]) == 0
    df = pd.read_csv(out / "candidates.csv")
    scored = df[df["status"].isin(["COMPLETE", "PRUNED"]) & df["accuracy"].notna()]
    assert len(scored) == len(df) == 2  # the fixture's study: its two seed plans, both evaluated
    url = (out / "report.html").as_uri()
    requests: list[str] = []
    errors: list[str] = []

    def only_the_page(route: Route) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", only_the_page)
            page.goto(url, wait_until="load", timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.js-plotly-plot')].every(d => d._fullLayout)", timeout=30_000
            )
            plots = page.evaluate(_PLOTS)
            assert set(plots) == set(FIGURE_IDS)
            for div, seen in plots.items():
                assert seen["traces"] > 0 and seen["svg"] > 0 and seen["drawn"] > 0, (div, seen)
            assert page.evaluate(_FRONT_POINTS) == len(scored)  # one point per candidate on the MACs panel
            assert page.locator("#structure .pt-note, #filters .pt-note").count() == 0  # the model's sections filled
            assert "version torch" in page.inner_text("#reproducibility")
            shots.mkdir(exist_ok=True)
            for section in ("front", "structure", "filters"):
                page.locator(f"#{section}").screenshot(path=str(shots / f"report-{section}.png"))
        finally:
            browser.close()
    assert requests == [url], "the page asked the network for something"
    assert errors == []
    assert all(0 < (shots / f"report-{s}.png").stat().st_size < 400_000 for s in ("front", "structure", "filters"))
