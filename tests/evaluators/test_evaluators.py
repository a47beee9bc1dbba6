"""Baseline training on real digits, then the evaluators on a pruned copy of it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from evaluators import (
    COMPLETE,
    FAIL,
    PRUNED,
    Accuracy,
    Baseline,
    BNRecalibration,
    Context,
    DataBundle,
    FineTune,
    Latency,
    Pipeline,
    Recipe,
    build_model,
    default_evaluator,
    load_data,
    train_baseline,
)
from spaces import Budget, ModelSpace, Plan


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return load_data("digits")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def baseline(data: DataBundle, artifacts: Path) -> Baseline:
    torch.set_num_threads(2)
    return train_baseline("zoo:resnet20", data, artifacts_dir=artifacts, device="cpu")


def test_digits_baseline_reaches_target_and_is_cached(baseline: Baseline, data: DataBundle, artifacts: Path) -> None:
    assert baseline.accuracy >= 0.97
    assert not baseline.cached and baseline.path.is_file() and baseline.path.parent == artifacts / "baselines"
    meta = json.loads(baseline.path.with_suffix(".json").read_text())
    assert meta["split_sizes"] == {"train": 1077, "val": 360, "test": 360}  # trained on train, scored on val
    again = train_baseline("zoo:resnet20", data, artifacts_dir=artifacts, device="cpu")
    assert again.cached and again.accuracy == baseline.accuracy and again.path == baseline.path
    for k, v in baseline.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])


@pytest.fixture(scope="module")
def pruned(baseline: Baseline, data: DataBundle) -> nn.Module:
    space = ModelSpace(baseline.model, data.example_inputs())
    return space.apply(space.fit(Plan(), Budget(macs="50%")))


def _ctx(data: DataBundle, baseline: Baseline, **kw: object) -> Context:
    return Context(data=data, teacher=baseline.model, device=torch.device("cpu"), seed=0, batch_size=64, **kw)  # type: ignore[arg-type]


def test_bn_recalibration_then_fine_tune_raise_accuracy(
    pruned: nn.Module, data: DataBundle, baseline: Baseline
) -> None:
    ctx = _ctx(data, baseline)
    none = Accuracy().evaluate(copy.deepcopy(pruned), ctx)
    bn = Pipeline([BNRecalibration(batches=20), Accuracy()]).evaluate(copy.deepcopy(pruned), ctx)
    ft = Pipeline([BNRecalibration(batches=20), FineTune(steps=60), Accuracy()]).evaluate(copy.deepcopy(pruned), ctx)
    assert none.status == bn.status == ft.status == COMPLETE
    assert none.accuracy is not None and bn.accuracy is not None and ft.accuracy is not None
    assert bn.accuracy > none.accuracy + 0.1
    assert ft.accuracy > bn.accuracy
    assert ft.steps == 60 and ft.train_seconds > 0


def test_distillation_changes_the_result_and_seeds_reproduce(
    pruned: nn.Module, data: DataBundle, baseline: Baseline
) -> None:
    ctx = _ctx(data, baseline)
    runs = {}
    for name, kd in (("ce", 0.0), ("kd", 0.8), ("kd2", 0.8)):
        model = copy.deepcopy(pruned)
        m = Pipeline([FineTune(steps=30, kd_weight=kd), Accuracy()]).evaluate(model, ctx)
        runs[name] = (m, model)
    (ce, m_ce), (kd, m_kd), (kd2, m_kd2) = runs["ce"], runs["kd"], runs["kd2"]
    assert kd.accuracy == kd2.accuracy and kd.loss == kd2.loss  # same seed, same result
    assert all(torch.equal(a, b) for a, b in zip(m_kd.state_dict().values(), m_kd2.state_dict().values(), strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(m_ce.state_dict().values(), m_kd.state_dict().values(), strict=True)
    )
    assert kd.loss != ce.loss


def test_callback_stops_early(pruned: nn.Module, data: DataBundle, baseline: Baseline) -> None:
    seen: list[tuple[int, float]] = []

    def cb(step: int, acc: float) -> bool:
        seen.append((step, acc))
        return step < 20

    m = FineTune(steps=50, eval_every=10).evaluate(copy.deepcopy(pruned), _ctx(data, baseline, callback=cb))
    assert m.status == PRUNED and "stopped at step 20" in (m.reason or "")
    assert [s for s, _ in seen] == [10, 20] and m.history == seen and m.steps == 20


def test_nan_or_diverging_loss_is_a_failed_candidate(pruned: nn.Module, data: DataBundle, baseline: Baseline) -> None:
    m = Pipeline([FineTune(steps=30, lr=1e8), Accuracy()]).evaluate(copy.deepcopy(pruned), _ctx(data, baseline))
    assert m.status == FAIL
    assert m.reason is not None and ("diverged" in m.reason or "nan" in m.reason.lower())
    assert m.accuracy is None  # the pipeline stopped


def test_latency_reports_medians(pruned: nn.Module, data: DataBundle, baseline: Baseline) -> None:
    m = Latency(batch_sizes=(1, 16), runs=5, warmup=1, threads=1).evaluate(pruned, _ctx(data, baseline))
    assert set(m.latency_ms) == {1, 16} and all(v > 0 for v in m.latency_ms.values())
    assert torch.get_num_threads() == 2  # restored


def test_bad_inputs_are_one_line_errors(data: DataBundle, baseline: Baseline) -> None:
    ctx = _ctx(data, baseline)
    wrong = build_model("zoo:resnet20", in_channels=1, num_classes=7)
    with pytest.raises(ValueError, match=r"outputs shape \(2, 7\) but 'digits' has 10 classes") as e:
        FineTune(steps=1).evaluate(wrong, ctx)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        Accuracy().evaluate(build_model("zoo:resnet20"), ctx)  # 3 input channels, digits has 1
    with pytest.raises(ValueError, match="needs context.teacher"):
        FineTune(steps=1, kd_weight=0.5).evaluate(build_model("zoo:resnet20", in_channels=1), Context(data=data))
    with pytest.raises(ValueError, match="optimizer must be"):
        FineTune(optimizer="lbfgs")
    with pytest.raises(ValueError, match="epochs >= 1"):
        Recipe(epochs=0)


def test_default_evaluator_is_the_benchmarked_proxy(pruned: nn.Module, data: DataBundle, baseline: Baseline) -> None:
    pipe = default_evaluator()
    assert [type(s).__name__ for s in pipe.steps] == ["BNRecalibration", "FineTune", "Accuracy"]
    assert pipe.steps[1].steps == 100  # type: ignore[attr-defined]
    m = pipe.evaluate(copy.deepcopy(pruned), _ctx(data, baseline))
    assert m.status == COMPLETE and m.accuracy is not None and m.accuracy > 0.9
    assert [s for s, _ in m.history] == [25, 50, 75]


def test_torchvision_models_adapt_to_the_data(data: DataBundle) -> None:
    model = build_model("torchvision:resnet18", in_channels=data.in_channels, num_classes=data.num_classes).eval()
    assert model(data.example_inputs(2)).shape == (2, 10)
    assert model.conv1.in_channels == 1
