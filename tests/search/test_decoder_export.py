"""Exports of a compressed language model: rebuilt exactly, plain transformers where its config can say it, ONNX."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import pytest
import torch

from evaluators._hf import tiny_model
from evaluators._lm import recover
from evaluators._text import stdlib_text
from search.operations._decoder_export import export_decoder, load_decoder, matmul_modules
from spaces import Plan, dequantized
from spaces.decoder import apply_decoder_plan

TEXT = stdlib_text(max_bytes=100_000)


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    model = tiny_model("llama")
    recover(model, TEXT.train, steps=40, lr=3e-3, context=64)
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TEXT.heldout[:64].unsqueeze(0), use_cache=False).logits


def test_a_uniform_plan_exports_a_plain_transformers_model_and_onnx_in_three_precisions(
    trained: torch.nn.Module, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    plan = Plan(prune={f"model.layers.{i}.{k}": 0.5 for i in range(2) for k in ("mlp", "attn")})
    report = export_decoder(trained, plan, tmp_path, tokens=TEXT.heldout)
    want = logits(apply_decoder_plan(trained, plan))
    assert torch.equal(logits(load_decoder(tiny_model("llama", seed=7), tmp_path)), want)  # base + plan + weights
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert (plain.config.intermediate_size, plain.config.num_key_value_heads) == (64, 1)
    torch.testing.assert_close(logits(plain), want, atol=1e-5, rtol=1e-5)
    onnx = report["onnx"]
    assert onnx["model.onnx"]["max_abs"] <= 1e-4 and onnx["model.onnx"]["top1_agreement"] == 1.0
    assert onnx["model.int8.onnx"]["top1_agreement"] >= 0.97 and onnx["model.int4.onnx"]["top1_agreement"] >= 0.8
    assert onnx["model.int8.onnx"]["max_abs"] < onnx["model.int4.onnx"]["max_abs"]
    assert onnx["model.int4.onnx"]["bytes"] < onnx["model.int8.onnx"]["bytes"] < onnx["model.onnx"]["bytes"]
    assert json.loads((tmp_path / "export.json").read_text()) == report


def test_a_plan_the_config_cannot_say_is_rebuilt_by_our_loader(trained: torch.nn.Module, tmp_path: Path) -> None:
    plan = Plan(prune={"model.layers.0.mlp": 0.5})  # layer 0 narrower than layer 1
    student = apply_decoder_plan(trained, plan)
    recover(student, TEXT.train, steps=3, context=64, teacher=trained, kd_weight=1.0)  # the model to export
    report = export_decoder(trained, plan, tmp_path / "mixed", tokens=TEXT.heldout, compressed=student)
    assert not (tmp_path / "mixed" / "hf").exists() and report["hf"].startswith(
        "not written: the family's config cannot say"
    )
    assert torch.equal(logits(load_decoder(trained, tmp_path / "mixed")), logits(student))
    # one layer dropped, the other pruned: one kind of layer again, which the config says
    plan = Plan(prune={"model.layers.0.mlp": 0.5}, depth={"model.layers.1": "shortcut"})
    export_decoder(trained, plan, tmp_path / "short", tokens=TEXT.heldout)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "short" / "hf", local_files_only=True).eval()
    assert plain.config.num_hidden_layers == 1
    torch.testing.assert_close(logits(plain), logits(apply_decoder_plan(trained, plan)), atol=1e-5, rtol=1e-5)


def test_an_export_that_fails_leaves_the_folder_as_it_was_and_a_new_one_replaces_every_file(
    trained: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.operations import _decoder_export

    uniform = Plan(prune={f"model.layers.{i}.mlp": 0.5 for i in range(2)})
    export_decoder(trained, uniform, tmp_path, tokens=TEXT.heldout)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert Path("hf/config.json") in before and Path("model.int4.onnx") in before

    def broken(*_: object) -> dict:
        raise RuntimeError("the exporter failed half-way")

    monkeypatch.setattr(_decoder_export, "_onnx_files", broken)
    mixed = Plan(prune={"model.layers.0.mlp": 0.5})  # one layer narrower: no hf/
    with pytest.raises(RuntimeError, match="half-way"):
        export_decoder(trained, mixed, tmp_path, tokens=TEXT.heldout)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # no file touched, no staging folder left
    with pytest.raises(RuntimeError, match="half-way"):
        export_decoder(trained, mixed, tmp_path / "new", tokens=TEXT.heldout)
    assert not (tmp_path / "new").exists()  # a folder made for the failed export goes with it
    monkeypatch.undo()
    export_decoder(trained, mixed, tmp_path, tokens=TEXT.heldout)
    assert not (tmp_path / "hf").exists()  # the old export's hf/ would contradict the new plan
    assert Plan.from_json((tmp_path / "plan.json").read_text()) == mixed
    assert torch.equal(logits(load_decoder(trained, tmp_path)), logits(apply_decoder_plan(trained, mixed)))


def test_a_plan_with_bits_exports_what_the_quantized_model_computes(trained: torch.nn.Module, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    plan = Plan(prune={f"model.layers.{i}.mlp": 0.5 for i in range(2)}, bits={"model.layers.0": 4, "model.layers.1": 8})
    report = export_decoder(trained, plan, tmp_path, tokens=TEXT.heldout)
    want = logits(apply_decoder_plan(trained, plan))
    assert not torch.allclose(want, logits(apply_decoder_plan(trained, Plan(prune=plan.entries("prune")))), atol=1e-4)
    assert torch.equal(logits(load_decoder(trained, tmp_path)), want)  # the master weights, quantized again
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    torch.testing.assert_close(logits(plain), want, atol=1e-5, rtol=1e-5)  # the weights on their grid
    assert report["onnx"]["model.onnx"]["max_abs"] <= 1e-4 and report["weight_bytes"] < report["params"] * 4
    # model.plan.onnx: layer 0's seven projections at 4 bits, layer 1's at 8, the output head in float32
    graph = onnx.load(str(tmp_path / "model.plan.onnx"))
    widths: dict[str, list[int]] = {}
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            bits = next(a.i for a in node.attribute if a.name == "bits")
            widths.setdefault(node.name.rsplit("_Q", 1)[0], []).append(bits)
    nodes = matmul_modules(onnx.load(str(tmp_path / "model.onnx")), dequantized(apply_decoder_plan(trained, plan))[0])
    assert len(nodes) == 2 * 7 + 1 and list(nodes.values())[-1] == "lm_head"  # every projection, MLP, the head
    for node, module in nodes.items():
        expected = 4 if module.startswith("model.layers.0.") else 8 if module.startswith("model.layers.1.") else None
        assert widths.get(node) == ([expected] if expected else None), (node, module)
    mixed, onnx_files = report["onnx"]["model.plan.onnx"], report["onnx"]
    assert onnx_files["model.int4.onnx"]["bytes"] < mixed["bytes"] < onnx_files["model.onnx"]["bytes"]
    assert mixed["top1_agreement"] >= 0.9 and mixed["max_abs"] < onnx_files["model.int4.onnx"]["max_abs"]


def test_per_layer_bits_follow_their_layer_when_the_plan_drops_one_before_it(
    trained: torch.nn.Module, tmp_path: Path
) -> None:
    plan = Plan(depth={"model.layers.0": "shortcut"}, bits={"model.layers.1": 4})  # layer 1 becomes layer 0
    export_decoder(trained, plan, tmp_path, tokens=TEXT.heldout)
    nodes = matmul_modules(onnx.load(str(tmp_path / "model.onnx")), dequantized(apply_decoder_plan(trained, plan))[0])
    quantized = {n.name.rsplit("_Q", 1)[0] for n in onnx.load(str(tmp_path / "model.plan.onnx")).graph.node
                 if n.op_type == "MatMulNBits"}  # fmt: skip
    assert quantized == {node for node, module in nodes.items() if module.startswith("model.layers.0.")}
    assert len(quantized) == 7


def test_the_4_bit_quantizer_is_imported_without_turning_on_every_library_s_info_messages() -> None:
    """ONNX Runtime's quantizer module calls logging.basicConfig(level=INFO) at import (search.operations._nbits):
    in a fresh interpreter, the root logger keeps no handler and its WARNING level, and the export prints nothing."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from search.operations._nbits import matmul_nbits_quantizer\n"
        "assert matmul_nbits_quantizer().__name__ == 'MatMulNBitsQuantizer'\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["0", str(logging.WARNING)] and done.stderr == ""
