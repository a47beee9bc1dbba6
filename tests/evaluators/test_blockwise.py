"""Sequential (block-wise) training: the changed blocks, in order, each brought closer to the original's output."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from evaluators import BlockwiseTraining, Context, DataBundle, block_error, build_model, changed_blocks, load_data
from spaces import ModelSpace, Plan, Status

PLAN = Plan(
    prune={"layer2.1.conv1": 0.5},  # inside a basic block: the block's output keeps its shape
    rank={"layer3.0.conv2": 0.25, "layer1.2.conv1": 0.5, "layer3.2.conv1": 0.5},
    method={"layer1.2.conv1": "versatile", "layer3.2.conv1": "tt"},
)


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return load_data("digits")


@pytest.fixture(scope="module")
def teacher(data: DataBundle) -> nn.Module:
    torch.manual_seed(0)
    return build_model("zoo:resnet20", in_channels=data.input_shape[0], num_classes=data.num_classes).eval()


@pytest.fixture(scope="module")
def space(teacher: nn.Module, data: DataBundle) -> ModelSpace:
    return ModelSpace(teacher, data.example_inputs(2))


def test_changed_blocks_are_the_changed_modules_that_keep_the_original_output(
    space: ModelSpace, teacher: nn.Module, data: DataBundle
) -> None:
    x = data.example_inputs(2)
    student = space.apply(PLAN)
    # layer2.1.conv1 is pruned: the block is its consumer, layer2.1.conv2, which keeps its output
    assert changed_blocks(student, teacher, x) == [
        "layer1.2.conv1", "layer2.1.conv2", "layer3.0.conv2", "layer3.2.conv1"
    ]  # fmt: skip
    assert changed_blocks(copy.deepcopy(teacher), teacher, x) == []
    # a pruned residual stage: every output of the stage is narrower, so the blocks are its consumers that keep
    # their output (taught to reproduce it from fewer input channels, as channel-pruning reconstruction does)
    residual = space.apply(Plan(prune={space.group("layer3.0.conv2").id: 0.5}))
    assert changed_blocks(residual, teacher, x) == ["layer3.1.conv1", "layer3.2.conv1", "fc"]


def test_blockwise_training_lowers_every_blocks_error_against_the_original(
    space: ModelSpace, teacher: nn.Module, data: DataBundle
) -> None:
    student = space.apply(PLAN)
    x = next(iter(data.val_loader(64)))[0]
    blocks = changed_blocks(student, teacher, x)
    before = {b: block_error(student, teacher, b, x) for b in blocks}
    ctx = Context(data=data, teacher=teacher, device=torch.device("cpu"), batch_size=32)
    metrics = BlockwiseTraining(steps=30, lr=1e-3).evaluate(student, ctx)
    assert metrics.status is Status.COMPLETE and metrics.steps == 0  # rungs count only the end-to-end fine-tune
    after = {b: block_error(student, teacher, b, x) for b in blocks}
    for b in blocks:
        assert after[b] < 0.8 * before[b], (b, before[b], after[b])
    assert all(p.requires_grad for p in student.parameters())  # the flags are restored
    assert all(not p.grad.abs().sum() if p.grad is not None else True for p in teacher.parameters())


def test_blockwise_training_needs_the_original_and_sane_settings(space: ModelSpace, data: DataBundle) -> None:
    with pytest.raises(ValueError, match="needs context.teacher"):
        BlockwiseTraining(steps=1).evaluate(space.apply(PLAN), Context(data=data, device=torch.device("cpu")))
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        BlockwiseTraining(steps=-1)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        BlockwiseTraining(lr=0)


class _Full(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 64) / 8)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return scale * (x @ self.w.T)


class _LowRank(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(4, 64) / 8), nn.Parameter(torch.randn(16, 4) / 2)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return scale * (x @ self.a.T @ self.b.T)


class _Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block, self.head = block, nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return self.head(self.block(flat, scale=flat.abs().mean(1, keepdim=True)))


def test_a_block_called_with_keywords_is_trained_with_them_and_a_resumed_model_is_left_alone(
    data: DataBundle,
) -> None:
    torch.manual_seed(0)
    teacher, student = _Net(_Full()).eval(), _Net(_LowRank()).eval()
    x = next(iter(data.val_loader(64)))[0]
    assert changed_blocks(student, teacher, x) == ["block"]
    ctx = Context(data=data, teacher=teacher, device=torch.device("cpu"), batch_size=32, resumed=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    BlockwiseTraining(steps=20, lr=1e-2).evaluate(student, ctx)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # trained when it was fresh
    error = block_error(student, teacher, "block", x)
    ctx.resumed = False
    BlockwiseTraining(steps=60, lr=1e-2).evaluate(student, ctx)
    assert block_error(student, teacher, "block", x) < 0.5 * error
