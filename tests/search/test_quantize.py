"""Studies that search bits: 8-bit weights cost the digits baseline almost nothing, a bytes budget is met with bits,
and an exported quantized candidate is rebuilt exactly (its input ranges travel in its weights file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evaluators import Context, evaluate_accuracy, load_data
from search import Search, load_config, load_exported
from search.cli import main
from spaces import Plan
from storage import StudyStore
from tests.search.conftest import ConfigMaker


def test_eight_bit_weights_move_the_digits_baseline_by_less_than_a_point(make_config: ConfigMaker) -> None:
    p = Search(load_config(make_config())).prepare().prepared
    layers = list(p.space.costs.trace.spatial)
    ctx = Context(data=p.data, batch_size=256)
    eight = p.space.apply(Plan(bits=dict.fromkeys(layers, 8)))
    base_acc, _ = evaluate_accuracy(p.base_model, ctx)
    eight_acc, _ = evaluate_accuracy(eight, ctx)
    assert abs(eight_acc - base_acc) < 0.01  # before any fine-tune
    four = p.space.apply(Plan(bits=dict.fromkeys(layers, 4)))
    x, _ = next(iter(p.data.val_loader(64)))
    with torch.no_grad():
        ref = p.base_model.eval()(x)
        err8, err4 = (float((m.eval()(x) - ref).abs().max()) for m in (eight, four))
    assert 0 < err8 < err4 / 4  # the weights are quantized, 8 bits far closer than 4
    assert p.space.cost(Plan(bits=dict.fromkeys(layers, 8))).bytes < 0.27 * p.base_cost.bytes


def test_a_bytes_budget_is_met_with_bits_and_the_export_is_rebuilt_exactly(
    make_config: ConfigMaker, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = make_config(
        budget__macs=None, budget__bytes="15%", space__quantize="weights+activations", search__candidates=4
    )
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert "bytes %" in capsys.readouterr().out  # the front shows the quantized bytes beside the parameters
    config = load_config(cfg)
    store = StudyStore(config.storage.url)
    rows = [r for r in store.candidates(store.study("t").id) if r.status == "COMPLETE"]
    assert len(rows) == 4
    p = Search(config).prepare().prepared
    limit = 0.15 * p.base_cost.bytes
    for r in rows:
        plan = Plan.from_json(r.plan)
        assert set(plan.bits) == set(p.space.costs.trace.spatial) and set(plan.act_bits) == set(plan.bits)
        assert r.bytes is not None and r.bytes <= limit
    uniform = next(Plan.from_json(r.plan) for r in rows if r.kind == "uniform")
    assert set(uniform.bits.values()) == {8}  # the seeds are at 8 bits, pruned onto the rest of the budget
    allocated = next(Plan.from_json(r.plan) for r in rows if r.kind == "allocator")
    assert 4 in allocated.bits.values() and set(allocated.act_bits) == set(allocated.bits)  # the allocator chose bits
    (table,) = (Path(config.search.artifacts_dir) / "baselines").glob("sensitivity-*.json")
    assert set(json.loads(table.read_text())["dims"]["bits"]) == set(allocated.bits)  # each layer at 8 and 4, measured
    best = max(rows, key=lambda r: r.accuracy or 0.0)
    out = tmp_path / "export"
    assert main(["export", str(cfg), "--trial", str(best.trial_number), "--out", str(out)]) == 0
    model = load_exported(out)
    notes = json.loads((out / "model.json").read_text())["compression"]["bits"]  # what was quantized, and how
    assert (
        notes["weight_bits"] == Plan.from_json(best.plan).bits
        and notes["input_bits"] == Plan.from_json(best.plan).act_bits
    )
    acc, _ = evaluate_accuracy(model, Context(data=load_data("digits"), batch_size=64))
    assert acc == best.accuracy
    # a real int8 model out: ONNX Runtime runs it, and it agrees with the simulated model
    args = ["export", str(cfg), "--trial", str(best.trial_number), "--out", str(tmp_path / "onnx")]
    assert main([*args, "--format", "onnx", "--int8"]) == 0
    checks = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert checks["model.onnx"]["parity_max_abs"] <= 1e-4
    assert checks["top1_agreement"] >= 0.99 and checks["agreement_images"] == len(load_data("digits").val)
    int8 = checks["model.int8.onnx"]
    assert int8["bytes"] < 0.5 * checks["model.onnx"]["bytes"] and checks["analytic_bytes"] == best.bytes
    assert abs(int8["tensor_bytes"] / best.bytes - 1) < 0.05  # BatchNorm folded into int32 biases, 4 bits packed
    assert set(checks["latency_batch1"]) == {"torch", "onnxruntime fp32", "onnxruntime int8"}
    assert json.loads((tmp_path / "onnx" / "model.json").read_text())["onnx"] == checks


def test_onnx_export_needs_its_config_and_int8_needs_onnx(existing: Path, capsys: pytest.CaptureFixture) -> None:
    db = f"sqlite:///{existing.parent / 'study.db'}"
    assert main(["export", "--storage", db, "--study", "t", "--trial", "0", "--out", "x", "--int8"]) == 2
    assert "--int8 writes an ONNX model: add --format onnx" in capsys.readouterr().err
    assert main(["export", "--storage", db, "--study", "t", "--trial", "0", "--out", "x", "--format", "onnx"]) == 2
    assert "give the study's CONFIG" in capsys.readouterr().err
