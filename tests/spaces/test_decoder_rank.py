"""Low-rank projections of a decoder (``plan.rank``): exact costs, the plan applied by hand, whitened SVD's optimum."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spaces import Plan, PlanError, fake_quant_weight, parameter_bytes
from spaces._lowrank import LayerGeom
from spaces.decoder import DecoderSpace, apply_decoder_plan, decoder_cost, layout_of, resolve
from spaces.factorization import factor_method
from tests.spaces.test_decoder import counted_macs, ids, plan_for, tiny


def test_whitened_svd_reaches_the_least_output_error_on_the_calibration_inputs() -> None:
    """On correlated inputs X, the whitened rank-r factors' error ||(W - BA) X^T||² is exactly the sum of the
    dropped squared singular values of W S (G = X^T X = S S^T), and below plain SVD's at the same rank."""
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(48, 32).double()
    x = torch.randn(500, 48, generator=g, dtype=torch.float64) @ torch.randn(48, 48, generator=g, dtype=torch.float64)
    x[:, :8] *= 20  # a few loud input features, as a language model's hidden states have
    gram = x.T @ x
    geom = LayerGeom("proj", "linear", 32, 48)
    with torch.no_grad():
        dense = layer(x)
        errors = {}
        for name in ("svd", "whitened"):
            chain = factor_method(name).factorize_with(layer, geom, (6,), gram)
            errors[name] = float((chain(x) - dense).pow(2).sum())
            torch.testing.assert_close(chain[0].weight.norm(dim=1), chain[1].weight.norm(dim=0))  # balanced pairs
    s = torch.linalg.cholesky(gram + 1e-6 * gram.diagonal().mean() * torch.eye(48, dtype=torch.float64))
    dropped = torch.linalg.svdvals(layer.weight.detach() @ s)[6:].pow(2).sum()
    assert errors["whitened"] == pytest.approx(float(dropped), rel=1e-4)
    assert errors["whitened"] < 0.5 * errors["svd"]
    with pytest.raises(PlanError, match="method 'whitened' on 'proj' needs the Gram matrix of the layer's inputs"):
        factor_method("whitened").factorize(layer, geom, (6,))


def rank_plan(model: nn.Module, method: str = "svd") -> Plan:
    """:func:`plan_for`'s pruning and dropped layer, layer 0's MLP at a quarter of full rank and layer 2's
    attention at a tenth."""
    structure = plan_for(model)
    ranks = {"model.layers.0.mlp": 0.25, "model.layers.2.attn": 0.1}
    return structure.replace(rank=ranks, method=dict.fromkeys(ranks, method))


def test_a_factorized_model_computes_what_the_plan_applied_by_hand_computes() -> None:
    """Prune and drop by the plan, then replace each projection by hand with its rank-r SVD: the same logits.
    A rank at or above break-even keeps the projection (and the logits) exactly."""
    model = tiny("llama")
    plan = rank_plan(model)
    hand = apply_decoder_plan(model, plan_for(model))  # layers 0 and 2 are now 0 and 1
    layers = layout_of(hand).layers(hand)
    choice = resolve(model, plan)
    assert set(choice.ranks) == {0, 2} and set(choice.ranks[0]) == {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    with torch.no_grad():
        for i, names in ((0, choice.ranks[0]), (1, choice.ranks[2])):
            for name, (_, r) in names.items():
                parent, _, attr = name.rpartition(".")
                dense = getattr(layers[i].get_submodule(parent), attr)
                u, sv, vh = torch.linalg.svd(dense.weight.double(), full_matrices=False)
                dense.weight.copy_((u[:, :r] * sv[:r]) @ vh[:r])
        torch.testing.assert_close(
            apply_decoder_plan(model, plan)(ids()).logits, hand(ids()).logits, atol=1e-5, rtol=1e-5
        )
        full = plan_for(model).replace(rank={g: 1.0 for g in ("model.layers.0.mlp", "model.layers.0.attn")})
        assert not resolve(model, full).ranks  # at or above break-even: dense
        assert torch.equal(
            apply_decoder_plan(model, full)(ids()).logits, apply_decoder_plan(model, plan_for(model))(ids()).logits
        )


@pytest.mark.parametrize("bits", [False, True])
def test_the_costs_of_factor_chains_equal_the_built_model_s(bits: bool) -> None:
    """Parameters, weight bytes (both factors quantized where the layer has bits), prefill and decode MACs."""
    model = tiny("llama")
    plan = rank_plan(model)
    if bits:
        plan = plan.replace(bits={"model.layers.0": 4, "model.layers.2": 8})
    built = apply_decoder_plan(model, plan)
    cost = decoder_cost(model, plan, context=12)
    assert cost.params == sum(p.numel() for p in built.parameters())
    assert cost.weight_bytes == parameter_bytes(built) < decoder_cost(model, plan_for(model), context=12).weight_bytes
    assert (cost.prefill_macs, cost.decode_macs) == counted_macs(built, 12)
    if bits:  # both factors of layer 0's down projection compute with 4-bit weights
        chain: nn.Sequential = built.model.layers[0].mlp.down_proj  # type: ignore[assignment]
        x = torch.randn(3, chain[0].in_features)
        with torch.no_grad():
            by_hand = nn.functional.linear(x, fake_quant_weight(chain[0].weight, 4))
            by_hand = nn.functional.linear(by_hand, fake_quant_weight(chain[1].weight, 4), chain[1].bias)
            assert [type(f).__name__ for f in chain] == ["QuantLinear", "QuantLinear"]
            torch.testing.assert_close(chain(x), by_hand)


def test_whitened_plans_read_the_calibration_grams_and_rebuild_from_their_weights() -> None:
    """A whitened plan needs the space's Gram matrices (a pruned input's restricted to what it keeps), and is
    rebuilt exactly from plan + weights (the factor chains' shapes, then the weights)."""
    from evaluators._text import stdlib_text

    model = tiny("llama")
    space = DecoderSpace(model, context=16)
    plan = rank_plan(model, "whitened")
    with pytest.raises(PlanError, match="needs the Gram matrix"):
        space.apply(plan)
    grams = space.calibrate_inputs(stdlib_text(max_bytes=20_000).calibration, windows=4)
    assert grams["model.layers.0.self_attn.k_proj"] is grams["model.layers.0.self_attn.q_proj"]
    assert grams["model.layers.0.mlp.down_proj"].shape == (128, 128)
    built = space.apply(plan)
    rebuilt = apply_decoder_plan(model, resolve(model, plan, counts_only=True), shapes_only=True)
    rebuilt.load_state_dict(copy.deepcopy(built.state_dict()))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids()).logits, built(ids()).logits)
        assert not torch.equal(built(ids()).logits, apply_decoder_plan(model, rank_plan(model))(ids()).logits)


def test_bad_rank_entries_are_one_line_errors() -> None:
    model = tiny("llama")
    with pytest.raises(PlanError, match=r"rank on 'model.layers.1.mlp': layer model.layers.1 is dropped"):
        resolve(model, plan_for(model).replace(rank={"model.layers.1.mlp": 0.5}))
    with pytest.raises(PlanError, match=r"rank on 'model.layers.0.ffn': ranks name a layer's groups"):
        resolve(model, Plan(rank={"model.layers.0.ffn": 0.5}))
    with pytest.raises(PlanError, match=r"the gpt2 layout's projections cannot be factorized yet"):
        resolve(tiny("gpt2"), Plan(rank={"transformer.h.0.mlp": 0.5}))
