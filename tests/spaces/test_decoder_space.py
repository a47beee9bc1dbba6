"""A decoder's space under a memory budget: fit, and the one-rule plans of LLM-Pruner, FLAP / Wanda-sp, ShortGPT."""

from __future__ import annotations

import pytest
import torch

from evaluators._hf import tiny_model
from evaluators._text import stdlib_text
from spaces import Plan, PlanError
from spaces.decoder import DecoderSpace, apply_decoder_plan, decoder_cost

CALIBRATION = stdlib_text(max_bytes=20_000).calibration


@pytest.fixture(scope="module")
def space() -> DecoderSpace:
    return DecoderSpace(tiny_model("llama", num_hidden_layers=4), context=128, batch=2)


def built_memory(space: DecoderSpace, plan: Plan) -> int:
    """Weights plus KV cache of the built model, counted from its tensors."""
    model = space.apply(plan)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        cache = model(CALIBRATION[:128].repeat(2, 1), use_cache=True).past_key_values
    return weights + sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def test_the_memory_budget_counts_weights_and_the_kv_cache(space: DecoderSpace) -> None:
    assert space.dense.memory_bytes == built_memory(space, Plan())
    assert space.memory_limit("50%") == space.dense.memory_bytes // 2 == space.memory_limit(0.5)
    assert space.memory_limit(1000) == 1000
    for bad in ("half", 0.0, -5, True):
        with pytest.raises(ValueError, match="memory budget must be"):
            space.memory_limit(bad)


@pytest.mark.parametrize("share", [0.5, 0.7])
def test_fit_gives_the_largest_uniform_model_within_the_budget(space: DecoderSpace, share: float) -> None:
    limit = space.memory_limit(share)
    plan = space.fit(space.uniform_plan(0.0), limit)
    assert built_memory(space, plan) == space.cost(plan).memory_bytes <= limit
    ratios = set(plan.prune.values())
    assert len(ratios) == 1  # one ratio for every group, as the rule says
    bigger = space.uniform_plan(next(iter(ratios)) - 0.02)
    assert space.cost(bigger).memory_bytes > limit  # a little less pruning no longer fits


def test_the_global_plan_removes_the_least_important_per_byte_and_fits(space: DecoderSpace) -> None:
    limit = space.memory_limit(0.5)
    plan = space.global_plan(limit)
    assert built_memory(space, plan) <= limit
    assert len(set(plan.prune.values())) > 1  # not one ratio: allocated across layers
    # ... and close to the budget: one more structure of the cheapest kind would have fit
    assert space.cost(plan).memory_bytes > limit - 4 * 64 * 3 * 2


def test_the_depth_plan_drops_the_least_influential_layers(space: DecoderSpace) -> None:
    influence = space.block_influence(CALIBRATION)
    assert len(influence) == 4 and all(0 <= v <= 2 for v in influence)
    plan = space.depth_plan(space.memory_limit(0.75), CALIBRATION)
    order = sorted(range(4), key=lambda i: influence[i])
    assert set(plan.depth) == {f"model.layers.{i}" for i in order[: len(plan.depth)]} and plan.depth
    assert built_memory(space, plan) <= space.memory_limit(0.75)


def test_calibrated_scores_are_wanda_sp_and_pick_the_kept_structures() -> None:
    space = DecoderSpace(tiny_model("qwen2"), context=64)
    scores = space.calibrate(CALIBRATION, windows=4)
    assert {k: v.shape for k, v in scores.items()} == {
        **{f"model.layers.{i}.attn": (2,) for i in range(2)},
        **{f"model.layers.{i}.mlp": (128,) for i in range(2)},
    }
    plan = Plan(prune={"model.layers.0.mlp": 0.5})
    kept = torch.topk(scores["model.layers.0.mlp"], 64).indices.sort().values
    built = space.apply(plan).model.layers[0].mlp.down_proj.weight
    torch.testing.assert_close(built, space.model.model.layers[0].mlp.down_proj.weight[:, kept])


def test_a_budget_below_the_smallest_plan_is_one_line(space: DecoderSpace) -> None:
    with pytest.raises(PlanError, match=r"memory budget 1000 bytes is below the smallest plan \(.* bytes at prune"):
        space.fit(space.uniform_plan(0.0), 1000)
    with pytest.raises(ValueError, match="context and batch must be at least 1"):
        DecoderSpace(space.model, context=0)
    assert decoder_cost(space.model, Plan(), context=128, batch=2) == space.dense
    assert apply_decoder_plan(space.model, Plan()) is not space.model
