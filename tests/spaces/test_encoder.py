"""A BERT-style encoder for classification through the decoder path's layout: plans exact, costs exact.

The same plan dimensions as the decoders (MLP channels, heads, layers, bits,
low-rank projections), on ``BertForSequenceClassification``: a plan that removes
nothing changes no logit, a pruned model computes what the dense one computes
with the removed structures zeroed (and a dropped layer taken out of the list:
BERT normalizes after each residual sum, so a zeroed layer is not an absent
one), and every cost equals the built model's and torch's FLOP counter's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from spaces import Plan
from spaces.decoder import BertLayout, DecoderSpace, apply_decoder_plan, decoder_cost, layout_of, resolve

pytest.importorskip("transformers")

PATH = "bert.encoder.layer"
PLAN = Plan(
    prune={f"{PATH}.0.mlp": 0.5, f"{PATH}.0.attn": 0.5, f"{PATH}.2.mlp": 0.25},
    depth={f"{PATH}.1": "shortcut"},
)


def tiny() -> torch.nn.Module:
    from evaluators._hf import tiny_model

    return tiny_model("bert", num_hidden_layers=3)


def ids(n: int = 12, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(1, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


def by_hand(model: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    """The dense model with the plan's removed channels and heads zeroed and its dropped layers taken out."""
    out, choice = copy.deepcopy(model), resolve(model, plan)
    layout = layout_of(out)
    with torch.no_grad():
        for i in choice.layers:
            layer = layout.layers(out)[i]
            a, m = layout.attention(layer), layout.mlp(layer)
            m.down[:, [j for j in range(m.width) if j not in choice.mlp[i]]] = 0
            for h in range(a.n_kv):
                if h not in choice.groups[i]:
                    a.o[:, h * a.head_dim : (h + 1) * a.head_dim] = 0
    encoder = out.get_submodule("bert.encoder")
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in choice.layers])
    return out


def test_the_encoder_has_its_layout_and_a_plan_that_removes_nothing_changes_no_logit() -> None:
    model = tiny()
    assert isinstance(layout_of(model), BertLayout) and not layout_of(model).causal
    same = apply_decoder_plan(model, Plan(prune={f"{PATH}.1.mlp": 0.0}))
    with torch.no_grad():
        assert torch.equal(same(ids()).logits, model(ids()).logits)


def test_a_pruned_encoder_computes_what_the_plan_applied_by_hand_computes() -> None:
    model = tiny()
    pruned = apply_decoder_plan(model, PLAN)
    layout = layout_of(pruned)
    assert len(layout.layers(pruned)) == 2 and pruned.config.num_hidden_layers == 2
    assert [layout.mlp(x).width for x in layout.layers(pruned)] == [64, 96]  # of 128
    assert layout.attention(layout.layers(pruned)[0]).n_heads == 2  # of 4
    with torch.no_grad():
        got, want = pruned(ids()).logits, by_hand(model, PLAN)(ids()).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, model(ids()).logits, atol=1e-4)  # the plan did change the model


def test_encoder_costs_equal_the_built_model_s_with_no_cache_and_no_decoding() -> None:
    model = tiny()
    pruned = apply_decoder_plan(model, PLAN)
    cost = decoder_cost(model, PLAN, context=12, batch=4)
    assert cost.params == sum(p.numel() for p in pruned.parameters())
    assert cost.weight_bytes == sum(p.numel() * p.element_size() for p in pruned.parameters())
    assert cost.kv_bytes == 0 and cost.decode_macs == 0 and cost.memory_bytes == cost.weight_bytes
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pruned(ids(12, batch=1))
    assert cost.prefill_macs == counter.get_total_flops() // 2
    # the pooler (64 x 64, first token) and the classifier (64 x 2) are the head
    assert layout_of(model).head_macs(model) == 64 * 64 + 64 * 2


def test_an_encoder_takes_bits_and_low_rank_projections_costed_exactly() -> None:
    model = tiny()
    plan = Plan(prune={f"{PATH}.0.mlp": 0.5}, bits={f"{PATH}.2": 8}, rank={f"{PATH}.0.mlp": 0.25})
    built = apply_decoder_plan(model, plan)
    from spaces import parameter_bytes

    cost = decoder_cost(model, plan, context=8)
    assert cost.params == sum(p.numel() for p in built.parameters())
    assert cost.weight_bytes == parameter_bytes(built)
    layer0 = layout_of(built).layers(built)[0]
    assert isinstance(layer0.get_submodule("intermediate.dense"), torch.nn.Sequential)
    with torch.no_grad():
        assert torch.isfinite(built(ids()).logits).all()


def test_the_space_calibrates_an_encoder_and_a_uniform_plan_saves_as_a_plain_bert(tmp_path: Path) -> None:
    from evaluators._hf import hf_model

    model = tiny()
    space = DecoderSpace(model, context=16)
    scores = space.calibrate(torch.randint(1, 256, (400,)), windows=4)
    assert set(scores) == set(space.groups) and scores[f"{PATH}.0.attn"].shape == (4,)
    plan = space.fit(space.uniform_plan(0.0), space.memory_limit("80%"))
    assert space.cost(plan).memory_bytes <= space.memory_limit("80%")
    small = space.apply(Plan(prune={f"{PATH}.{i}.mlp": 0.5 for i in range(3)}))
    assert small.config.intermediate_size == 64  # its config says what it is: transformers alone rebuilds it
    small.save_pretrained(tmp_path / "bert", safe_serialization=True)
    again = hf_model(tmp_path / "bert")
    with torch.no_grad():
        assert torch.equal(again(ids()).logits, small(ids()).logits)


def test_an_encoder_is_timed_for_its_one_pass_and_has_no_decoding_to_learn() -> None:
    from spaces import UnsupportedModelError
    from spaces.decoder import pass_times, profile_decoder

    model = tiny()
    prefill_ms, decode_ms = pass_times(model, 12, runs=1)
    assert prefill_ms > 0 and decode_ms != decode_ms  # NaN: an encoder does not decode
    with pytest.raises(UnsupportedModelError, match="bert is an encoder"):
        profile_decoder(DecoderSpace(model, context=12), device="cpu", threads=1)
