"""Device profiles: per-layer latency tables, their prediction, the channel multiple, latency budgets.

No test here asserts a wall-clock time: timings are benchmark figures (bench/bench_latency.py). These
tests check what must hold whatever the machine measured: the tables' grids and keys, monotone
predictions, budgets met in predicted latency, and one-line errors.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from spaces import (
    AllocatorFallbackWarning,
    Budget,
    DeviceProfile,
    ModelSpace,
    Plan,
    PlanError,
    measure_latency,
    profile_space,
)
from spaces.cost._latency import FRACTIONS, LayerTable, multiple_from


def _net() -> nn.Module:
    def block(cin: int, cout: int, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16), *block(16, 32), *block(32, 32, groups=32), *block(32, 24),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def space() -> ModelSpace:
    torch.manual_seed(0)
    return ModelSpace(_net().eval(), torch.randn(1, 3, 16, 16))


@pytest.fixture(scope="module")
def profile(space: ModelSpace) -> DeviceProfile:
    return profile_space(space, threads=1, runs=2, warmup=1)


def _synthetic(space: ModelSpace) -> DeviceProfile:
    """A profile whose tables are MACs-like (``cin * cout`` µs), and a rest of 0.1 + 0.2 x ms."""
    prof = profile_space(space, threads=1, runs=1, warmup=0)
    for t in prof.layers.values():
        t.ms = [[1e-3 * (co if t.depthwise else ci * co) for co in t.outs] for ci in t.ins]
    prof.rest, prof.scale = (0.1, 0.2), 1.0
    return prof


def test_every_conv_and_linear_has_a_table_over_the_channels_plans_can_give_it(
    space: ModelSpace, profile: DeviceProfile
) -> None:
    t = profile.layers
    assert list(t) == ["0", "3", "6", "9", "14"]
    assert t["0"].ins == [3] and t["0"].outs == [2, 4, 6, 8, 10, 12, 14, 16]  # the image's channels do not change
    assert t["3"].ins == [round(16 * f) for f in FRACTIONS] and t["3"].outs == [round(32 * f) for f in FRACTIONS]
    assert t["6"].depthwise and t["6"].ins == [32] and len(t["6"].ms) == 1  # one axis: groups follow channels
    assert t["14"].outs == [10]  # the classifier keeps its outputs
    for table in t.values():
        ms = np.array(table.ms)
        assert ms.shape == (len(table.ins), len(table.outs)) and (ms > 0).all()
        assert (np.diff(ms, axis=0) >= 0).all() and (np.diff(ms, axis=1) >= 0).all()  # made monotone
    assert profile.base_ms > 0 and [c[0] for c in profile.calibration] == [0.0, 0.25, 0.5, 0.75]
    assert profile.rest[0] >= 0 and profile.rest[1] >= 0 and profile.scale >= 0.05


def test_the_calibration_fits_the_tables_in_context_and_never_predicts_a_negative_time() -> None:
    from spaces.cost._latency import _fit_calibration

    tables, xs = [4.0, 2.6, 1.4, 0.5], [1.0, 0.75, 0.5, 0.25]
    exact = [0.8 * t + 0.3 + 0.5 * x for t, x in zip(tables, xs, strict=True)]
    assert _fit_calibration(tables, xs, exact) == pytest.approx((0.8, 0.3, 0.5), abs=1e-6)
    # one-node tables that overcount the whole model: a free line would need a negative overhead
    s, a, b = _fit_calibration(tables, xs, [2.0, 1.2, 0.5, 0.15])
    assert s >= 0.05 and a >= 0 and b >= 0 and s * 0.01 + a + b * 0.01 > 0


def test_the_prediction_interpolates_the_tables_and_is_monotone_in_kept_channels(space: ModelSpace) -> None:
    prof = _synthetic(space)
    full = space.costs.channels
    # the dense model: every table at its full counts, plus the whole rest
    dense = sum(t.ms[-1][-1] for t in prof.layers.values()) + 0.1 + 0.2
    assert prof.predict_keep(space, full) == pytest.approx(dense)
    table = LayerTable(ins=[4, 8], outs=[2, 6], ms=[[1.0, 3.0], [2.0, 4.0]])
    assert table.at(6, 4) == pytest.approx(2.5) and table.at(100, 0) == pytest.approx(2.0)  # bilinear, clamped
    preds = [prof.predict(space, space.uniform_plan(r)) for r in np.linspace(0, 0.9, 10)]
    assert all(a >= b for a, b in itertools.pairwise(preds)) and preds[-1] < preds[0] / 3
    rng = np.random.default_rng(0)
    for _ in range(20):  # one more channel in any group never predicts less time
        keep = np.array([rng.integers(1, c + 1) for c in full])
        i = int(rng.integers(len(full)))
        more = keep.copy()
        more[i] = min(full[i], keep[i] + 1)
        assert prof.predict_keep(space, more) >= prof.predict_keep(space, keep)


def test_a_latency_budget_is_met_by_fit_and_the_allocator_in_predicted_latency(space: ModelSpace) -> None:
    sp = ModelSpace(_net().eval(), torch.randn(1, 3, 16, 16))
    sp.attach_profile(_synthetic(sp))
    base = sp.base_cost.latency
    assert base is not None and sp.cost(sp.uniform_plan(0.0)).latency == pytest.approx(base)
    for budget in (Budget(latency="50%"), Budget(latency=f"{0.4 * base:.4f}ms"), Budget(macs="60%", latency="45%")):
        limit = min(budget.absolute(sp.base_cost).get("latency", np.inf), base)
        plan = sp.fit(sp.uniform_plan(0.0), budget)
        cost = sp.cost(plan)
        assert cost.latency is not None and cost.latency <= limit and budget.is_met(cost, sp.base_cost)
        assert cost.latency >= 0.85 * limit  # the budget is used, not wasted
        with warnings.catch_warnings():
            warnings.simplefilter("error", AllocatorFallbackWarning)  # the integer program itself meets it
            alloc = sp.allocate(budget, rank=False).plan
        assert budget.is_met(sp.cost(alloc), sp.base_cost)
    assert sp.costs.cost_of_keep(sp.costs.channels, {"3": ("svd", (4,))}).latency is None  # ranks: not predicted


def test_a_profile_without_factor_tables_refuses_ranks_and_bits_in_one_line(space: ModelSpace) -> None:
    prof = _synthetic(space)
    untimed = r"^latency cannot be predicted for this plan: layer '3' is factorized by svd, which the device profile"
    with pytest.raises(PlanError, match=untimed + r" did not time \(methods timed: none"):
        prof.predict(space, Plan(rank={"3": 0.5}))
    with pytest.raises(PlanError, match="it has bits, which device profiles do not time"):
        prof.predict(space, Plan(bits={"3": 4}))
    with pytest.raises(PlanError, match="^budget latency=50% needs a device profile"):
        Budget(latency="50%").slack(space.base_cost, space.base_cost)  # the space has no profile attached
    with pytest.raises(ValueError, match="methods must be among svd, .*, got 'qr'"):
        profile_space(space, methods=["qr"])


def _chains(sp: ModelSpace) -> DeviceProfile:
    """A synthetic profile with svd chains: a chain at rank r costs ``(cin + cout) * r`` µs, as its MACs."""
    prof = _synthetic(sp)
    real = profile_space(sp, threads=1, runs=1, warmup=0, methods=["svd"])
    for tables in real.factored.values():
        t = tables["svd"]
        t.ms = [[[1e-3 * (ci + co) * r for r in t.ranks] for co in t.outs] for ci in t.ins]
    prof.factored = real.factored
    return prof


def test_factor_chains_are_timed_over_channels_and_ranks_and_predicted() -> None:
    torch.manual_seed(0)
    sp = ModelSpace(_net().eval(), torch.randn(1, 3, 16, 16))
    real = profile_space(sp, threads=1, runs=1, warmup=0, methods=["svd", "tt"])
    t = real.factored["3"]["svd"]  # 16 -> 32 3x3: break-even rank 26 (9 * 16 * 26 + 26 * 32 < 9 * 16 * 32)
    assert sp.layer("3").max_useful_rank("svd") == 26 and t.ranks == [3, 8, 13, 18, 23]  # 0.1, 0.3, ... of it
    assert t.ins == [4, 8, 12, 16] and t.outs == [8, 16, 24, 32]
    ms = np.array(t.ms)
    assert ms.shape == (4, 4, 5) and (ms > 0).all() and all((np.diff(ms, axis=a) >= 0).all() for a in range(3))
    assert "6" not in real.factored and set(real.factored["3"]) == {"svd", "tt"}  # the depthwise conv has no chain
    assert real.key != profile_space(sp, threads=1, runs=1, warmup=0).key  # the methods are part of the key
    assert real.key == DeviceProfile.key_for(sp, torch.device("cpu"), threads=1, batch=1, methods=["tt", "svd"])
    prof = _chains(sp)
    sp.attach_profile(prof)
    dense = prof.predict(sp, Plan())
    for r in (3, 5, 13, 20):
        plan = Plan(rank={"3": r})
        chain = 1e-3 * (16 + 32) * r  # the synthetic chain at the full counts, on its rank grid or between
        assert prof.predict(sp, plan) == pytest.approx(dense - prof.layers["3"].ms[-1][-1] + chain)
        assert sp.cost(plan).latency == pytest.approx(prof.predict(sp, plan))
    assert prof.predict(sp, Plan(rank={"3": 1})) == prof.predict(sp, Plan(rank={"3": 3}))  # clamped to the grid
    assert DeviceProfile.from_json(prof.to_json()) == prof


def test_a_latency_budget_on_a_rank_plan_is_met_by_fit_and_refused_by_the_allocator_in_one_line() -> None:
    torch.manual_seed(0)
    sp = ModelSpace(_net().eval(), torch.randn(1, 3, 16, 16))
    sp.attach_profile(_chains(sp))
    budget = Budget(latency="60%")
    plan = sp.fit(Plan(rank={"3": 3}), budget)
    cost = sp.cost(plan)
    assert plan.rank == {"3": 3} and plan.prune and cost.latency is not None  # ranks held, pruning moved
    assert cost.latency <= 0.6 * sp.base_cost.latency and budget.is_met(cost, sp.base_cost)  # type: ignore[operator]
    with pytest.raises(PlanError, match="^budget latency cannot be met for this plan: layer '3' is factorized by tt"):
        sp.fit(Plan(rank={"3": 3}, method={"3": "tt"}), budget)
    with pytest.raises(PlanError, match="allocate it with rank=False"):
        sp.allocate(budget, rank=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-3ms", "got '-3ms'"),
        ("0%", "got '0%'"),
        ("3 parsecs", "unknown unit 'parsecs'"),
        ("3", "which has no unit"),
        (True, "got True"),
    ],
)
def test_bad_latency_budgets_are_one_line_errors(value: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as err:  # InputTypeError (a TypeError) for a wrong type
        Budget(latency=value)
    text = str(err.value)
    assert "\n" not in text and text.startswith("budget latency must be a positive number") and message in text


def test_latency_budgets_read_milliseconds_and_percentages() -> None:
    assert Budget(latency="3ms").absolute() == {"latency": 3.0}
    assert Budget(latency="800us").absolute() == {"latency": pytest.approx(0.8)}
    assert Budget(latency="0.5s").absolute() == {"latency": 500.0}
    assert Budget(latency=2.5).absolute() == {"latency": 2.5}
    assert Budget.from_dict({"latency": "60%"}).to_dict() == {"latency": "60%"}


def test_the_channel_multiple_is_where_a_staircase_stops_paying() -> None:
    counts = range(33, 65)
    for step in (4, 8, 16, 32):
        stairs = {k: 1.0 + -(-k // step) for k in counts}  # time jumps only at multiples of ``step``
        assert multiple_from(stairs) == step
    linear = {k: 0.01 * k for k in counts}  # every channel costs: only a tiny multiple is free
    assert multiple_from(linear) <= 2
    steep = {k: 1e-3 * k**3 for k in counts}
    assert multiple_from(steep) == 1


def test_a_profile_round_trips_through_json_and_is_keyed_by_device_threads_and_batch(
    profile: DeviceProfile,
) -> None:
    again = DeviceProfile.from_json(profile.to_json())
    assert again == profile and again.key == profile.key
    other = DeviceProfile.from_json({**__import__("json").loads(profile.to_json()), "threads": profile.threads + 1})
    assert other.key != profile.key


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (1, 4, 9, 9)),
        (nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, bias=False), (2, 4, 8, 8)),
        (nn.Conv2d(6, 6, 4, padding="same", groups=6), (1, 6, 7, 7)),  # depthwise, even kernel, "same"
        (nn.Conv1d(3, 5, 3, padding="valid"), (2, 3, 10)),
        (nn.Linear(7, 5), (2, 4, 7)),  # tokens: MatMul + Add on inputs of any rank
        (nn.Linear(7, 5, bias=False), (3, 7)),
        (nn.Sequential(nn.Conv2d(4, 2, 3, bias=False), nn.Conv2d(2, 6, 1)), (1, 4, 9, 9)),  # a factor chain
        (nn.Sequential(nn.Linear(7, 2, bias=False), nn.Linear(2, 5)), (2, 7)),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_a_layers_one_node_onnx_graph_computes_what_the_layer_does(layer: nn.Module, shape: tuple[int, ...]) -> None:
    from spaces.runtime._ort import layer_runner

    torch.manual_seed(0)
    x = torch.randn(shape)
    (y,) = layer_runner(layer.eval(), x, threads=1)()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), layer(x), atol=1e-5, rtol=1e-5)


def test_an_onnxruntime_profile_has_the_same_grids_under_its_own_key(space: ModelSpace, profile: DeviceProfile) -> None:
    ort = profile_space(space, threads=1, runs=2, warmup=1, runtime="onnxruntime")
    cpu = torch.device("cpu")
    assert ort.runtime == "onnxruntime" and ort.key != profile.key
    assert ort.key == DeviceProfile.key_for(space, cpu, threads=1, batch=1, runtime="onnxruntime")
    assert {n: (t.ins, t.outs) for n, t in ort.layers.items()} == {
        n: (t.ins, t.outs) for n, t in profile.layers.items()
    }
    assert len(ort.calibration) == 4 and all(m > 0 for _, m, _ in ort.calibration)  # the exported model, timed
    full, half = ort.predict(space, Plan()), ort.predict(space, space.uniform_plan(0.5))
    assert full >= half > 0


def test_the_exported_model_onnxruntime_times_is_the_model() -> None:
    from spaces.runtime._ort import model_runner

    torch.manual_seed(0)
    model, x = _net().eval(), torch.randn(1, 3, 16, 16)
    (y,) = model_runner(model, x, threads=1)()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), atol=1e-4, rtol=1e-4)
    timed = measure_latency(model, x, runs=3, warmup=1, runtime="onnxruntime", threads=1)
    assert timed["runs"] == 3 and timed["p10_ms"] <= timed["measured_ms"] <= timed["p90_ms"]


def test_bad_runtimes_are_one_line_errors(space: ModelSpace) -> None:

    with pytest.raises(ValueError, match="runtime must be one of torch, onnxruntime, got 'tvm'"):
        profile_space(space, runtime="tvm")
    with pytest.raises(ValueError, match="runtime 'onnxruntime' times the CPU, got device 'cuda'"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), device="cuda", runtime="onnxruntime")


@pytest.mark.parametrize("limit", ["3ms", "60%", 2.5])
@pytest.mark.parametrize("policy", ["fit", "global_plan", "allocate"])
def test_a_latency_budget_without_a_profile_is_a_one_line_error(space: ModelSpace, limit: object, policy: str) -> None:
    budget = Budget(macs="50%", latency=limit)
    shown = {"3ms": "3ms", "60%": "60%", 2.5: "2.5ms"}[limit]
    calls = {
        "fit": lambda: space.fit(space.uniform_plan(0.0), budget),
        "global_plan": lambda: space.global_plan(budget),
        "allocate": lambda: space.allocate(budget, rank=False),
    }
    assert space.profile is None
    with pytest.raises(PlanError) as err:
        calls[policy]()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"budget latency={shown} needs a device profile: ")
    assert "`prunetune profile`" in text


def test_the_in_context_ratio_is_interpolated_along_positions_and_rank_levels() -> None:
    from spaces.cost._latency import ratio_at

    assert ratio_at([], 0.5) == 1.0  # no measurement: the table as timed alone
    dense = [[1.0, 0.0, 2.0], [0.5, 0.0, 1.0], [0.25, 0.0, 1.5]]
    assert ratio_at(dense, 1.0) == pytest.approx(2.0) and ratio_at(dense, 0.75) == pytest.approx(1.5)
    assert ratio_at(dense, 0.375) == pytest.approx(1.25) and ratio_at(dense, 0.1) == pytest.approx(1.5)  # clamped
    chain = [[1.0, 0.3, 2.0], [0.5, 0.3, 1.0], [1.0, 0.7, 4.0], [0.5, 0.7, 2.0]]
    assert ratio_at(chain, 0.75, 0.3) == pytest.approx(1.5) and ratio_at(chain, 0.75, 0.7) == pytest.approx(3.0)
    assert ratio_at(chain, 0.75, 0.5) == pytest.approx(2.25) and ratio_at(chain, 1.0, 0.9) == pytest.approx(4.0)


def test_the_tables_are_corrected_by_their_in_context_ratios_and_stay_monotone(space: ModelSpace) -> None:
    from spaces.cost._latency import _apply_context, _position

    prof = _synthetic(space)
    before = {n: np.array(t.ms) for n, t in prof.layers.items()}
    prof.context = {"3": [[1.0, 0.0, 2.0], [0.5, 0.0, 1.0]], "6": [[1.0, 0.0, 0.5], [0.25, 0.0, 0.5]]}
    _apply_context(space, prof)
    t3 = prof.layers["3"]  # 16 -> 32: doubled at the full counts, as timed alone at half of both, between: linear
    for i, ci in enumerate(t3.ins):
        for j, co in enumerate(t3.outs):
            u = _position(t3, ci, co)
            assert u == pytest.approx(np.sqrt(ci / 16 * co / 32))
            expected = before["3"][i, j] * float(np.interp(u, [0.5, 1.0], [1.0, 2.0]))
            assert t3.ms[i][j] == pytest.approx(expected)
    np.testing.assert_allclose(prof.layers["6"].ms, before["6"] * 0.5)  # the depthwise conv: half, everywhere
    np.testing.assert_allclose(prof.layers["9"].ms, before["9"])  # no measurement: unchanged
    # a ratio that falls with the channels would break monotony: the cumulative maximum restores it
    prof.context = {"9": [[1.0, 0.0, 0.25], [0.125, 0.0, 4.0]]}
    _apply_context(space, prof)
    ms = np.array(prof.layers["9"].ms)
    assert (np.diff(ms, axis=0) >= 0).all() and (np.diff(ms, axis=1) >= 0).all()


def test_a_factor_chains_table_is_corrected_at_its_ranks_levels() -> None:
    from spaces.cost._latency import _correct_chain

    torch.manual_seed(0)
    sp = ModelSpace(_net().eval(), torch.randn(1, 3, 16, 16))
    prof = _chains(sp)
    chain = prof.factored["3"]["svd"]
    before = np.array(chain.ms)
    points = [[1.0, 0.3, 2.0], [0.25, 0.3, 2.0], [1.0, 0.7, 3.0], [0.25, 0.7, 3.0]]  # 2x at 0.3, 3x at 0.7
    _correct_chain(sp, "3", chain, points)
    even = sp.layer("3").max_useful_rank("svd")  # 26 at the full counts: ranks 3 .. 23 are 0.12 .. 0.88 of it
    expected = [float(np.interp(r / even, [0.3, 0.7], [2.0, 3.0])) for r in chain.ranks]
    np.testing.assert_allclose(np.array(chain.ms)[-1, -1], before[-1, -1] * expected)
    ms = np.array(chain.ms)
    assert all((np.diff(ms, axis=a) >= 0).all() for a in range(3))


def test_an_exported_initializer_belongs_to_the_longest_layer_that_names_it() -> None:
    from spaces.runtime._ort import _owner_of

    owner = _owner_of(["layer1.0.conv1", "layer1.0.conv", "fc", "1"])
    assert owner("layer1.0.conv1.weight") == "layer1.0.conv1" and owner("layer1.0.conv.weight") == "layer1.0.conv"
    assert owner("layer1.0.conv1.0.weight") == "layer1.0.conv1"  # a factor chain's first factor
    assert owner("fc.bias") == "fc" and owner("14.weight") is None and owner("x") is None


def test_a_profile_times_each_layer_inside_the_whole_model_and_predicts_its_calibration(space: ModelSpace) -> None:

    prof = profile_space(space, threads=1, runs=5, warmup=2)
    assert set(prof.context) == set(prof.layers)  # every layer, at every calibration plan
    for points in prof.context.values():
        assert len(points) == len(prof.calibration) and all(0.25 <= r <= 4.0 for _, _, r in points)
        assert [round(u, 2) for u, _, _ in points] == sorted((round(u, 2) for u, _, _ in points), reverse=True)
    plan, threads = space.uniform_plan(0.5), torch.get_num_threads()
    torch.set_num_threads(1)  # as profiled: one thread waits for no other on a busy machine
    try:
        measured = measure_latency(space.apply(plan), space.example_inputs, runs=25)["measured_ms"]
    finally:
        torch.set_num_threads(threads)
    predicted = prof.predict(space, plan)
    assert 0.5 < predicted / measured < 2.0  # a loose band: the machine's load moves both
    again = DeviceProfile.from_json(prof.to_json())
    assert again == prof and again.context == prof.context


def test_factor_chains_and_onnxruntime_layers_are_timed_in_context(space: ModelSpace) -> None:
    from spaces.cost._latency import channel_block

    sp = ModelSpace(_net().eval(), torch.randn(1, 3, 16, 16))
    prof = profile_space(sp, threads=1, runs=2, warmup=1, methods=["svd"])
    levels = sorted({w for _, w, _ in prof.context["3@svd"]})
    assert levels == [0.3, 0.7] and len(prof.context["3@svd"]) == 4  # two prune ratios at each rank level
    ort = profile_space(space, threads=1, runs=2, warmup=1, runtime="onnxruntime")
    assert set(ort.context) == set(ort.layers)  # the profiler's nodes all map back to their layers
    extra = 2 if ort.block > 1 else 0  # two more plans, one channel below two of them, off the channel block
    assert ort.block == channel_block("onnxruntime") and all(len(p) == 4 + extra for p in ort.context.values())
    assert (ort.block > 1) == any(w == 1.0 for _, w, _ in ort.context["3"])  # 15 -> 31 channels: off the block


def test_an_older_profile_format_is_measured_again_not_misread() -> None:
    import hashlib
    import json

    from spaces.cost._latency import PROFILE_FORMAT, profile_key

    old = hashlib.sha256(json.dumps([2, "m", "cpu", "torch", 1, 1]).encode()).hexdigest()
    assert PROFILE_FORMAT == 3 and profile_key("m", "cpu", "torch", 1, 1) != old


def test_counts_off_the_runtimes_channel_block_read_their_own_in_context_ratio(space: ModelSpace) -> None:
    from spaces.cost._latency import channel_block

    assert channel_block("torch") == 1 and channel_block("onnxruntime") in (1, 8, 16)
    prof = _synthetic(space)
    prof.block, prof.multiple = 8, 1
    on, off = [[1.0, 0.0, 0.5], [0.5, 0.0, 0.5]], [[1.0, 1.0, 1.5], [0.5, 1.0, 1.0]]
    prof.context = {"0": on + off, "3": on + off}
    assert prof.off_block("3", 16, 32) == 1.0  # on the block: the corrected table as it is
    for cin, cout in ((16, 31), (12, 16), (15, 24)):  # off the block: level 1 over level 0 where the counts lie
        u = np.sqrt(cin / 16 * cout / 32)
        assert prof.off_block("3", cin, cout) == pytest.approx(float(np.interp(u, [0.5, 1.0], [1.0, 1.5])) / 0.5)
    assert prof.off_block("0", 3, 16) == 1.0 and prof.off_block("0", 3, 15) > 1.0  # the image's 3 channels: no block
    prof.context["3"] = [*on[:1], [1.0, 1.0, 4.0]]
    assert prof.off_block("3", 16, 31) == 3.0  # 8x from two noisy ratios: clipped
    prof.context["3"] = [*on[:1], [1.0, 1.0, 0.25]]
    assert prof.off_block("3", 16, 31) == 1.0  # never faster off the block than on it
    prof.context = {"0": on + off, "3": on + off}
    keep = space.costs.channels.copy()
    alone = prof.predict_keep(space, keep)
    prof.block = 1  # no block (torch): counts never leave it
    assert prof.off_block("3", 16, 31) == 1.0 and prof.predict_keep(space, keep) == alone


def test_a_runtime_is_one_class_and_one_registration(space: ModelSpace) -> None:
    """A plug-in runtime registered under its name is what the profile and the end-to-end measurement time in."""
    from spaces import Runtime, register_runtime, runtime_names
    from spaces.runtime._eager import TorchRuntime
    from spaces.runtime._registry import RUNTIME_REGISTRY

    calls: list[str] = []

    class Counting(TorchRuntime):
        name = "counting"

        def model_call(self, model: nn.Module, inputs: tuple, threads: int):  # type: ignore[no-untyped-def]
            calls.append("model")
            return super().model_call(model, inputs, threads)

    assert runtime_names() == ("torch", "onnxruntime")
    register_runtime(Counting)
    try:
        assert isinstance(RUNTIME_REGISTRY.get("counting"), Runtime) and "counting" in runtime_names()
        out = measure_latency(space.model, space.example_inputs, runtime="counting", runs=2, warmup=0)
        assert calls == ["model"] and out["runs"] == 2.0
        with pytest.raises(ValueError, match="runtime must be one of torch, onnxruntime, counting, got 'tvm'"):
            measure_latency(space.model, space.example_inputs, runtime="tvm")
    finally:
        RUNTIME_REGISTRY.unregister("counting")
