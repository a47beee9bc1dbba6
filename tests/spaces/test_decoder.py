"""Decoder-only language models: plans exact against the plan applied by hand, costs exact against the built model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from evaluators import build_model
from spaces import Plan, PlanError, UnsupportedModelError
from spaces.decoder import apply_decoder_plan, decoder_cost, decoder_groups, layout_of, resolve

# the hf-tiny families, and two with sliding windows: Mistral's on every layer, Qwen2's on its upper layers
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "mistral-sliding", "qwen2-sliding"]
SLIDING = {
    "mistral-sliding": ("mistral", {"sliding_window": 4}),
    "qwen2-sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
}


def plan_for(model: torch.nn.Module) -> Plan:
    """Half of layer 0's MLP and key-value groups, layer 1 dropped (the layers after it renumbered), a quarter
    of layer 2's MLP."""
    path = layout_of(model).layers_path(model)
    return Plan(
        prune={f"{path}.0.mlp": 0.5, f"{path}.0.attn": 0.5, f"{path}.2.mlp": 0.25},
        depth={f"{path}.1": "shortcut"},
    )


def tiny(family: str) -> torch.nn.Module:
    from evaluators._hf import tiny_model

    family, extra = SLIDING.get(family, (family, {}))
    return tiny_model(family, **({"n_layer": 3} if family == "gpt2" else {"num_hidden_layers": 3, **extra}))


def ids(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(seed))


def by_hand(model: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    """The dense model with the plan's removed structures zeroed: what removing them must compute."""
    out, choice = copy.deepcopy(model), resolve(model, plan)
    layout = layout_of(out)
    with torch.no_grad():
        for i, layer in enumerate(layout.layers(out)):
            a, m = layout.attention(layer), layout.mlp(layer)
            if i not in choice.layers:  # attention and MLP add nothing: the layer passes the residual stream
                for t in (a.o, m.down, a.o_bias, m.down_bias):
                    if t is not None:
                        t.zero_()
                continue
            gone = [j for j in range(m.width) if j not in choice.mlp[i]]
            m.down[:, gone] = 0  # the views write through to the model's parameters
            for g in range(a.n_kv):
                if g not in choice.groups[i]:
                    a.o[:, g * a.per_group * a.head_dim : (g + 1) * a.per_group * a.head_dim] = 0
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_a_plan_that_removes_nothing_gives_bit_identical_logits(family: str) -> None:
    model = tiny(family)
    path = layout_of(model).layers_path(model)
    same = apply_decoder_plan(model, Plan(prune={f"{path}.1.mlp": 0.0}))
    with torch.no_grad():
        assert torch.equal(same(ids()).logits, model(ids()).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pruned_model_computes_what_the_plan_applied_by_hand_computes(family: str) -> None:
    model, plan = tiny(family), plan_for(tiny(family))
    pruned = apply_decoder_plan(model, plan)
    layout = layout_of(pruned)
    assert len(layout.layers(pruned)) == 2 and pruned.config.num_hidden_layers == 2
    widths = [layout.mlp(layer).width for layer in layout.layers(pruned)]
    dense = [layout.mlp(layer).width for layer in layout.layers(model)]
    assert widths == [dense[0] // 2, dense[2] * 3 // 4]
    first, before = layout.attention(layout.layers(pruned)[0]), layout.attention(layout.layers(model)[0])
    assert (first.n_kv, first.n_heads) == (before.n_kv // 2, before.n_heads // 2)
    with torch.no_grad():
        got, want = pruned(ids()).logits, by_hand(model, plan)(ids()).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, model(ids()).logits, atol=1e-3)  # the plan did change the model
    # generation through the cache (renumbered layers, per-layer windows) gives what recomputing everything gives
    cached = pruned.generate(ids(6), max_new_tokens=8, do_sample=False)
    assert cached.shape == (2, 14)
    assert torch.equal(cached, pruned.generate(ids(6), max_new_tokens=8, do_sample=False, use_cache=False))


@torch.no_grad()
def counted_macs(model: torch.nn.Module, context: int) -> tuple[int, int]:
    """torch's FLOP counter on ``model``, halved: a prefill of ``context`` tokens, then one decoded token after
    ``context - 1`` cached (batch 1, the last position's logits only)."""
    one = ids(context)[:1]
    with FlopCounterMode(display=False) as prefill:
        model(one, use_cache=False, logits_to_keep=1)
    past = model(one[:, :-1], use_cache=True).past_key_values
    with FlopCounterMode(display=False) as decode:
        model(one[:, -1:], past_key_values=past, logits_to_keep=1)
    return prefill.get_total_flops() // 2, decode.get_total_flops() // 2


@pytest.mark.parametrize("family", FAMILIES)
def test_analytic_costs_equal_the_built_model_s(family: str) -> None:
    """Parameters, KV-cache bytes and prefill and decode MACs, against the model and torch's FLOP counter."""
    model, plan = tiny(family), plan_for(tiny(family))
    pruned = apply_decoder_plan(model, plan)
    context = 12
    cost = decoder_cost(model, plan, context=context, batch=2)
    assert cost.params == sum(p.numel() for p in pruned.parameters())
    assert cost.weight_bytes == sum(p.numel() * p.element_size() for p in pruned.parameters())
    with torch.no_grad():
        cache = pruned(ids(context), use_cache=True).past_key_values
        assert cost.kv_bytes == sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert (cost.prefill_macs, cost.decode_macs) == counted_macs(pruned, context)
    dense = decoder_cost(model, Plan(), context=context, batch=2)
    assert dense.params == sum(p.numel() for p in model.parameters())
    # half the key-value groups of layer 0, all of layer 1, none of layer 2: half the cache remains
    assert cost.kv_bytes * 2 == dense.kv_bytes


def test_groups_are_named_after_the_layer_list_and_bad_plans_are_one_line_errors() -> None:
    model = tiny("llama")
    assert decoder_groups(model) == {
        **{f"model.layers.{i}.attn": 2 for i in range(3)},
        **{f"model.layers.{i}.mlp": 128 for i in range(3)},
    }
    with pytest.raises(PlanError, match=r"prune group 'model.layers.9.mlp' is not in this model"):
        resolve(model, Plan(prune={"model.layers.9.mlp": 0.5}))
    with pytest.raises(PlanError, match=r"depth block 'layers.1' is not a decoder layer; they are model.layers.0 to"):
        resolve(model, Plan(depth={"layers.1": "shortcut"}))
    with pytest.raises(PlanError, match="drops all 3 decoder layers"):
        resolve(model, Plan(depth={f"model.layers.{i}": "shortcut" for i in range(3)}))
    # a ratio near 1 still keeps one structure
    assert resolve(model, Plan(prune={"model.layers.0.attn": 0.99})).groups[0] != ()


def test_the_kept_structures_are_the_largest_by_default() -> None:
    model = tiny("llama")
    layer = layout_of(model).layers(model)[0]
    with torch.no_grad():
        layer.mlp.down_proj.weight[:, 7] *= 100  # channel 7 the largest
        layer.self_attn.v_proj.weight[16:] *= 100  # key-value group 1 the largest
    choice = resolve(model, Plan(prune={"model.layers.0.mlp": 0.99, "model.layers.0.attn": 0.5}))
    assert (choice.mlp[0], choice.groups[0]) == ((7,), (1,))


def test_hf_directories_load_offline_and_bad_ones_are_one_line_errors(tmp_path: Path) -> None:
    model = tiny("qwen2")
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    loaded = build_model(f"hf:{tmp_path / 'm'}")
    with torch.no_grad():
        assert torch.equal(loaded(ids()).logits, model(ids()).logits)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedModelError, match="has no config.json"):
        build_model(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(UnsupportedModelError, match="does not exist"):
        build_model(f"hf:{tmp_path / 'nowhere'}")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(UnsupportedModelError, match="needs its own code .* never runs code from a model directory"):
        build_model(f"hf:{tmp_path / 'm'}")
    with pytest.raises(UnsupportedModelError, match="hf-tiny family must be one of llama, mistral"):
        build_model("hf-tiny:falcon")


def test_the_vision_space_refuses_a_language_model_in_one_line() -> None:
    from spaces import ModelSpace

    with pytest.raises(UnsupportedModelError, match="is a transformers language model"):
        ModelSpace(tiny("llama"), ids())


def test_a_family_without_a_layout_is_named_with_the_supported_ones() -> None:
    model = tiny("llama")
    model.config.model_type = "falcon"
    with pytest.raises(UnsupportedModelError, match=r"no decoder layout reads model_type 'falcon' .*gpt2, llama"):
        layout_of(model)


def test_the_config_says_what_a_uniform_plan_made_and_nothing_it_cannot_say() -> None:
    from evaluators._hf import tiny_model

    model = tiny_model("llama")
    pruned = apply_decoder_plan(
        model, Plan(prune={f"model.layers.{i}.{k}": 0.5 for i in range(2) for k in ("mlp", "attn")})
    )
    assert (pruned.config.intermediate_size, pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (
        64,
        2,
        1,
    )
    assert model.config.intermediate_size == 128  # the base model's config is its own
    # 3 of 4 heads: LlamaConfig refuses a width of 64 over 3 heads, so the config cannot say it
    mha = tiny_model("llama", num_key_value_heads=4)
    odd = apply_decoder_plan(mha, Plan(prune={f"model.layers.{i}.attn": 0.25 for i in range(2)}))
    assert layout_of(odd).config_fields(odd) is None and odd.config.num_attention_heads == 4


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_per_layer_bits_quantize_a_layer_s_projections_and_cost_their_bytes(family: str) -> None:
    """Layer 0 at 4 bits and layer 2 at 8, on a pruned and shortened model: the logits are the pruned model's
    with those projections' weights quantized by hand, and the weight bytes are the built model's."""
    from spaces import fake_quant_weight, parameter_bytes

    model = tiny(family)
    structure = plan_for(model)
    plan = Plan(
        prune=structure.entries("prune"),
        depth=structure.entries("depth"),
        bits={"model.layers.0": 4, "model.layers.2": 8},
    )
    quantized = apply_decoder_plan(model, plan)
    hand = apply_decoder_plan(model, structure)  # layers 0 and 2 are now 0 and 1
    layout = layout_of(hand)
    with torch.no_grad():
        for i, b in ((0, 4), (1, 8)):
            for p in layout.projections(layout.layers(hand)[i]):
                p.weight.copy_(fake_quant_weight(p.weight, b))
        got, want = quantized(ids()).logits, hand(ids()).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, apply_decoder_plan(model, structure)(ids()).logits, atol=1e-4)  # bits did change it
    cost, float_cost = decoder_cost(model, plan, context=12), decoder_cost(model, structure, context=12)
    assert cost.weight_bytes == parameter_bytes(quantized) < float_cost.weight_bytes
    assert (cost.params, cost.kv_bytes, cost.decode_macs) == (
        float_cost.params,
        float_cost.kv_bytes,
        float_cost.decode_macs,
    )
    with pytest.raises(PlanError, match=r"bits on 'model.layers.1': a dropped layer"):
        resolve(model, Plan(depth=structure.entries("depth"), bits={"model.layers.1": 4}))
    with pytest.raises(
        PlanError, match=r"bits on 'transformer.h.0': the gpt2 layout's projections cannot be quantized yet"
    ):
        resolve(tiny("gpt2"), Plan(bits={"transformer.h.0": 8}))
