"""report.html from a hand-made study: the figures' data, greyed and apart as the page promises (no browser here;
tests/search/test_report_browser.py opens a real study's page in Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from storage import ReportExtras, StudyStore, candidates_frame, front_figure, public_url, write_report
from tests.storage.test_store import _study


@pytest.fixture
def store(tmp_path: Path) -> tuple[StudyStore, str]:
    store = StudyStore(f"sqlite:///{tmp_path / 'study.db'}")
    sid = _study(store, "hand")
    cost = {"macs": 500, "params": 50, "bytes": 200}
    phases = {"apply": 0.1, "train": 1.0, "eval": 0.2, "other": 0.05}
    outcomes = [  # kind, status, accuracy, macs
        ("allocator", "COMPLETE", 0.95, 480),
        ("uniform", "COMPLETE", 0.93, 490),  # dominated by the allocator's
        ("sampled", "COMPLETE", 0.90, 300),
        ("sampled", "PRUNED", 0.60, 350),
        ("sampled", "FAIL", None, 400),
    ]
    for i, (kind, status, acc, macs) in enumerate(outcomes):
        cid = store.reserve(sid, json.dumps({"prune": {"g": i / 10}}), f"h{i}", trial_number=i, kind=kind)
        assert cid is not None
        store.finish(cid, status, accuracy=acc, cost={**cost, "macs": macs}, seconds=1.35, phases=phases,
                     error="diverged" if status == "FAIL" else None)  # fmt: skip
    store.record_test_accuracy(1, 0.94)
    return store, "hand"


def test_the_frame_holds_kind_phases_and_test_accuracy(store: tuple[StudyStore, str]) -> None:
    df = candidates_frame(*store)
    assert list(df["kind"]) == ["allocator", "uniform", "sampled", "sampled", "sampled"]
    assert list(df["test_accuracy"].fillna(-1)) == [0.94, -1, -1, -1, -1]
    assert list(df["t_train"]) == [1.0] * 5 and list(df["on_front"]) == [True, False, True, False, False]


def test_front_points_are_grouped_as_the_legend_says(store: tuple[StudyStore, str]) -> None:
    st, name = store
    fig = front_figure(candidates_frame(st, name), st.study(name))
    macs = [t for t in fig.data if t.xaxis == "x"]  # the MACs panel
    by_name = {t.name: sorted(zip(t.x, t.y, strict=True)) for t in macs}
    assert by_name["Pareto front (validation)"] == [(300, 0.90), (480, 0.95)]
    assert by_name["dominated"] == [(490, 0.93)]
    assert by_name["early-stopped (last accuracy)"] == [(350, 0.60)]
    assert by_name["test accuracy (finalized)"] == [(480, 0.94)]  # apart from the validation point
    assert by_name["uncompressed model"] == [(1000, 0.98)]
    assert sum(len(t.x) for t in macs if t.meta and t.meta.get("role") == "candidates") == 4  # FAIL has no accuracy
    assert {s.x0 for s in fig.layout.shapes if s.xref == "x"} == {500}  # the budget cap: 50% of 1000 MACs
    assert len({t.xaxis for t in fig.data}) == 3  # MACs, params, bytes; no latency measured


def test_a_measured_latency_gets_its_own_panel(tmp_path: Path) -> None:
    store = StudyStore(f"sqlite:///{tmp_path / 'lat.db'}")
    sid = _study(store, "lat")
    cid = store.reserve(sid, "{}", "h", trial_number=0, kind="sampled")
    store.finish(cid or 0, "COMPLETE", accuracy=0.9, cost={"macs": 400, "params": 40, "bytes": 160},
                 latency_ms={1: 2.5})  # fmt: skip
    fig = front_figure(candidates_frame(store, "lat"), store.study("lat"))
    [latency] = [t for t in fig.data if t.xaxis == "x4" and t.name.startswith("Pareto")]
    assert (list(latency.x), list(latency.y)) == ([2.5], [0.9])


def test_write_report_writes_a_self_contained_page(store: tuple[StudyStore, str], tmp_path: Path) -> None:
    st, name = store
    st.reserve(st.study(name).id, "{}", "running-without-a-trial")  # RUNNING: no trial number, no accuracy yet
    paths = write_report(st, name, tmp_path / "out", extras=ReportExtras(reproducibility={"version x": "1"}))
    page = paths[-1].read_text()
    assert paths[-1].name == "report.html" and len(page) > 1_000_000  # plotly.js inlined
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    for div in ("pt-front", "pt-best", "pt-phases", "pt-outcomes"):
        assert f'id="{div}"' in page
    assert "diverged" in page and "version x" in page
    assert "no plan to show" in page  # no extras: the model's sections say why they are empty


def test_public_urls_carry_no_credentials() -> None:
    assert public_url("postgresql+psycopg://bob:secret@db:5432/s") == "postgresql+psycopg://db:5432/s"
    assert public_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
