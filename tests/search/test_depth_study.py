"""`[space.depth]` on the digits example: a study finds plans that drop blocks, within budget, exact after export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluators import Context, evaluate_accuracy, load_data
from search import load_config, load_exported
from search.cli import main
from spaces import Plan
from storage import StudyStore
from tests.search.conftest import ConfigMaker


def test_a_depth_study_drops_blocks_within_budget_and_exports_exactly(
    make_config: ConfigMaker, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = make_config(search__candidates=6, **{"space.depth__max_share": 1.0})
    assert main(["run", str(cfg), "--quiet"]) == 0
    config = load_config(cfg)
    store = StudyStore(config.storage.url)
    info = store.study("t")
    rows = [r for r in store.candidates(info.id) if r.status == "COMPLETE"]
    deep = [r for r in rows if Plan.from_json(r.plan).entries("depth")]
    assert deep, [r.plan for r in rows]
    assert all(r.macs is not None and r.macs <= 0.5 * info.base_cost["macs"] for r in rows)
    best = max(deep, key=lambda r: r.accuracy or 0.0)
    out = tmp_path / "export"
    assert main(["export", str(cfg), "--trial", str(best.trial_number), "--out", str(out)]) == 0
    model = load_exported(out)
    acc, _ = evaluate_accuracy(model, Context(data=load_data("digits"), batch_size=64))
    assert acc == best.accuracy and sum(p.numel() for p in model.parameters()) == best.params
    notes = json.loads((out / "model.json").read_text())["compression"]["depth"]
    assert notes["dropped_blocks"] == sorted(Plan.from_json(best.plan).entries("depth"))
    onnx = tmp_path / "onnx"
    assert main(["export", str(cfg), "--trial", str(best.trial_number), "--out", str(onnx), "--format", "onnx"]) == 0
    assert json.loads((onnx / "onnx.json").read_text())["model.onnx"]["parity_max_abs"] <= 1e-4
