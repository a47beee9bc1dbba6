"""The plan-dimension contract: stored plans keep their JSON and hash, and a third dimension plugs in with one line.

The toy dimension here, ``bias``, drops the bias of conv/linear layers
(``{"bias": {"fc": 0}}``). It is written only in this test, registers with one
line, and flows through the plan's JSON, the exact cost, the surgery, ``fit``,
the sampler's parameters and the report's structure rows without any other
module knowing it. A second toy implements only the core contract: plans that
use it are costed and built, and the sampler, the allocator and the report
skip it, saying so once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from search.operations._report_data import structure_frame
from search.sampling._params import distributions, params_from_plan, plan_from_params
from spaces import Budget, ModelSpace, Plan, PlanError, measure_cost
from spaces.dimensions import (
    ROLES,
    CostState,
    Dimension,
    ParamSpec,
    Reported,
    Sampled,
    StructureRow,
    check_relations,
    dimensions,
    register_dimension,
    unregister_dimension,
    with_role,
)
from tests.spaces.models import MODELS

FIXTURE = Path(__file__).parents[1] / "spaces" / "data" / "plans_before_dimensions.json"


class DropBias(Dimension, Sampled, Reported):
    """Drop the bias of factorizable conv/linear layers: ``{"bias": {layer: 0}}`` (sampled and reported)."""

    key = "bias"
    describe: ClassVar[dict[str, str]] = {"bias": "layer to 0 (its bias dropped)"}
    order = 20

    def normalize(self, values: dict[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        for layer, v in values["bias"].items():
            if v != 0:
                raise PlanError(f"bias of layer {layer!r} can only be dropped (0), got {v!r}")
        return {"bias": dict(values["bias"])}

    def resolve(self, costs: Any, plan: Plan, keep: np.ndarray) -> Any | None:
        out = {}
        for name in plan.bias:
            if getattr(costs.trace.model.get_submodule(name), "bias", None) is None:
                raise PlanError(f"layer {name!r} has no bias to drop")
            out[name] = costs.pruned_geom(name, keep).cout
        return out or None

    def add_cost(self, costs: Any, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        for name, cout in resolved.items():
            state.params -= cout
            state.bytes -= cout * costs.element_size(name)

    def apply(self, surgery: Any, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        for name in resolved:
            layer = model.get_submodule(name)
            (layer[-1] if isinstance(layer, nn.Sequential) else layer).bias = None  # a factor chain: its last

    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        if not options.get("drop_bias"):
            return {}
        with_bias = [g.name for g in space.layers if space.model.get_submodule(g.name).bias is not None]
        return {name: ParamSpec(0.0, 1.0, step=1.0) for name in with_bias}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Any:
        return {"bias": {name: 0 for name, v in values.items() if v >= 0.5}}

    def to_params(self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Any) -> Any:
        return {name: 1.0 if name in plan.bias else 0.0 for name in specs}

    def summary(self, plan: Plan, limit: int) -> str | None:
        return f"{len(plan.bias)} biases dropped" if plan.bias else None

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        return [StructureRow("bias kept", g.name, int(g.name not in plan.bias), 1) for g in space.layers]


class CoreOnly(Dimension):
    """Zero the bias of conv/linear layers, ``{"zero_bias": {layer: 0}}``: the core contract and no role."""

    key = "zero_bias"
    order = 21

    def normalize(self, values: dict[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        return {"zero_bias": {str(k): 0 for k in values["zero_bias"]}}

    def resolve(self, costs: Any, plan: Plan, keep: np.ndarray) -> Any | None:
        return sorted(plan.entries("zero_bias")) or None

    def add_cost(self, costs: Any, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        """A zeroed bias is still stored: nothing changes."""

    def apply(self, surgery: Any, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        for name in resolved:
            with torch.no_grad():
                model.get_submodule(name).bias.zero_()


@pytest.fixture
def toy() -> Iterator[Dimension]:
    dim = register_dimension(DropBias)  # the one line a new dimension needs
    yield dim
    unregister_dimension("bias")


@pytest.fixture(scope="module")
def space() -> ModelSpace:
    torch.manual_seed(0)
    return ModelSpace(MODELS["resnet20"](), torch.randn(1, 3, 32, 32))


def test_plans_stored_before_dimensions_keep_their_json_and_hash() -> None:
    saved = json.loads(FIXTURE.read_text())
    assert len(saved) == 10
    for entry in saved:
        plan = Plan.from_json(entry.get("stored", entry["json"]))
        assert plan.to_json() == entry["json"]
        assert plan.hash == entry["hash"]


def test_registering_a_dimension_changes_no_older_plan(toy: Dimension) -> None:
    ours = {"prune", "rank", "bias", "bits"}  # an installed plug-in (examples/plugins) may add its own
    assert [d.key for d in dimensions() if d.key in ours] == ["prune", "rank", "bias", "bits"]  # by (order, key)
    for entry in json.loads(FIXTURE.read_text()):
        assert Plan.from_json(entry["json"]).hash == entry["hash"]


def test_the_toy_dimension_flows_through_json_cost_and_surgery(toy: Dimension, space: ModelSpace) -> None:
    plan = Plan({"layer1.0.conv1": 0.5}, rank={"fc": 3}, bias={"fc": 0})
    text = plan.to_json()
    assert json.loads(text)["bias"] == {"fc": 0}
    assert Plan.from_json(text) == plan and plan.bias == {"fc": 0}
    assert Plan(bias={}).is_empty and not Plan(bias={"fc": 0}).is_empty
    with pytest.raises(PlanError, match="bias of layer 'fc' can only be dropped"):
        Plan(bias={"fc": 1})
    with pytest.raises(PlanError, match="layer 'layer1.0.conv1' has no bias to drop"):
        space.cost(Plan(bias={"layer1.0.conv1": 0}))
    x = torch.randn(1, 3, 32, 32)
    without = space.cost(plan.replace(bias={}))
    cost = space.cost(plan)
    assert (without.params - cost.params, without.bytes - cost.bytes, without.macs) == (10, 40, cost.macs)
    model = space.apply(plan)
    assert model.fc[-1].bias is None  # factorized first (rank), then its bias dropped (order 20)
    assert measure_cost(model, x) == cost
    dense = space.apply(Plan(bias={"fc": 0}))
    assert measure_cost(dense, x) == space.cost(Plan(bias={"fc": 0}))


def test_fit_holds_the_toy_dimension(toy: Dimension, space: ModelSpace) -> None:
    budget = Budget(params="40%")
    fitted = space.fit(Plan(bias={"fc": 0}), budget)
    assert fitted.bias == {"fc": 0} and fitted.prune
    assert budget.is_met(space.cost(fitted), space.base_cost)
    assert space.cost(fitted) == measure_cost(space.apply(fitted), torch.randn(1, 3, 32, 32))


def test_the_sampler_and_the_report_see_the_toy_dimension(toy: Dimension, space: ModelSpace) -> None:
    options = {"max_ratio": 0.5, "rank": False, "method": "svd", "drop_bias": True}
    dists = distributions(space, options)
    assert "bias:fc" in dists and sum(k.startswith("prune:") for k in dists) == len(space.groups)
    params = {name: dist.low for name, dist in dists.items()} | {"bias:fc": 1.0}
    plan = plan_from_params(space, params, options)
    assert plan.bias == {"fc": 0} and not plan.prune
    assert params_from_plan(space, plan, dists, options)["bias:fc"] == 1.0
    assert "bias:fc" not in distributions(space, {**options, "drop_bias": False})
    frame = structure_frame(space, {"toy": plan})
    assert list(dict.fromkeys(frame["what"])) == ["kept channels", "rank", "bias kept"]
    row = frame[(frame["what"] == "bias kept") & (frame["unit"] == "fc")].iloc[0]
    assert (row["kept"], row["total"], row["fraction"]) == (0, 1, 0.0)


def test_the_core_contract_is_small_and_the_roles_are_opt_in() -> None:
    core = [n for n, v in vars(Dimension).items() if callable(v) and not n.startswith("_")]
    assert len(Dimension.__abstractmethods__) <= 8 and len(core) <= 8, sorted(core)
    assert all(not hasattr(Dimension, m) for r in ROLES for m in r.__abstractmethods__)  # roles are apart
    builtin = [d for d in with_role(Sampled) if d.key in ("prune", "rank", "bits")]
    assert [type(d).__name__ for d in builtin] == ["PruneSampling", "RankDimension", "BitsDimension"]


def test_a_core_only_dimension_is_built_and_skipped_by_the_roles_once(
    space: ModelSpace, caplog: pytest.LogCaptureFixture
) -> None:
    register_dimension(CoreOnly)
    try:
        plan = Plan({"layer1.0.conv1": 0.5}, zero_bias={"fc": 0})
        model = space.apply(plan)
        assert float(model.fc.bias.detach().abs().sum()) == 0.0
        assert space.cost(plan) == space.cost(Plan({"layer1.0.conv1": 0.5}))
        options = {"max_ratio": 0.5, "rank": False, "method": "svd"}
        with caplog.at_level("INFO", logger="prunetune"):
            dists = distributions(space, options)
            distributions(space, options)
            frame = structure_frame(space, {"core": plan})
        assert not any(k.startswith("zero_bias") for k in dists)
        assert "zero_bias" not in set(frame["what"]) and len(frame)
        said = [r.getMessage() for r in caplog.records if "'zero_bias'" in r.getMessage()]
        assert said == [
            "plan dimension 'zero_bias' does not implement Sampled: skipped there",
            "plan dimension 'zero_bias' does not implement Reported: skipped there",
        ]
        assert space.allocate(Budget(macs="60%"), rank=False).plan.entries("zero_bias") == {}
    finally:
        unregister_dimension("zero_bias")


def test_relations_are_declared_once_and_checked_in_one_message() -> None:
    class NeedsBits(CoreOnly):
        key = "needs_bits"
        order = 22
        requires = ("bits",)
        conflicts: ClassVar[dict[str, str]] = {"zero_bias": "both touch biases"}

    register_dimension(CoreOnly)
    register_dimension(NeedsBits)
    try:
        check_relations(["prune", "bits", "needs_bits"], where="here")
        with pytest.raises(PlanError) as e:
            check_relations(["prune", "rank", "bits", "zero_bias", "needs_bits"], where="[space]")
        assert str(e.value) == (
            "[space]: bits and rank cannot be searched together (a factorized layer is not quantized); "
            "needs_bits and zero_bias cannot be searched together (both touch biases): choose one"
        )
        with pytest.raises(PlanError, match=r"^allocate: needs_bits requires bits, which is off$"):
            check_relations(["prune", "needs_bits"], where="allocate")
    finally:
        unregister_dimension("needs_bits")
        unregister_dimension("zero_bias")
