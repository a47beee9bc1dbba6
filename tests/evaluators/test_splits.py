"""Train / validation / test: every data spec's three splits, on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from evaluators import (
    DEFAULT_FASHION_MNIST_DIR,
    Accuracy,
    Context,
    DataBundle,
    Recipe,
    baseline_key,
    evaluate_accuracy,
    fashion_mnist_split,
    load_data,
    read_idx,
)
from spaces import InputTypeError


def _rows(ds: TensorDataset) -> list[bytes]:
    return [row.numpy().tobytes() for row in ds.tensors[0]]


def _tensors(ds: object) -> tuple[torch.Tensor, ...]:
    assert isinstance(ds, TensorDataset)
    return ds.tensors


# --- digits ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data("digits", seed=0)


def test_digits_splits_partition_the_data(digits: DataBundle) -> None:
    from sklearn.datasets import load_digits

    sizes = tuple(len(_tensors(ds)[0]) for ds in (digits.train, digits.val, digits.test))
    assert sizes == (1077, 360, 360)
    assert digits.has_test
    train, val, test = (set(_rows(ds)) for ds in (digits.train, digits.val, digits.test))  # type: ignore[arg-type]
    assert len(train) == 1077 and len(val) == 360 and len(test) == 360  # no sample twice within a split
    assert not (train & val) and not (train & test) and not (val & test)
    x, _ = load_digits(return_X_y=True)
    everything = {row.tobytes() for row in (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)}
    assert train | val | test == everything  # the 1,797 images, each in exactly one split


def test_digits_splits_are_stratified(digits: DataBundle) -> None:
    from sklearn.datasets import load_digits

    _, y = load_digits(return_X_y=True)
    total = np.bincount(y, minlength=10)
    for ds in (digits.test, digits.val):
        labels = _tensors(ds)[1]
        counts = torch.bincount(labels, minlength=10).numpy()
        expected = total * len(labels) / len(y)
        assert np.all(np.abs(counts - expected) <= 1), (counts, expected)


def test_digits_splits_are_seeded(digits: DataBundle) -> None:
    again, other = load_data("digits", seed=0), load_data("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert all(torch.equal(s, t) for s, t in zip(_tensors(a), _tensors(b), strict=True))
    assert set(_rows(digits.val)) != set(_rows(other.val))  # type: ignore[arg-type]
    assert set(_rows(digits.test)) != set(_rows(other.test))  # type: ignore[arg-type]
    custom = load_data("digits", val_fraction=0.1, test_fraction=0.3)
    assert (len(custom.train), len(custom.val), len(custom.test)) == (1077, 180, 540)  # type: ignore[arg-type]


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.2, 0.0), (0.5, 0.5), (1.2, 0.1)])
def test_digits_rejects_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction < 1") as info:
        load_data("digits", val_fraction=val, test_fraction=test)
    assert "\n" not in str(info.value)


# --- Fashion-MNIST ----------------------------------------------------------------------------------

needs_fashion = pytest.mark.skipif(
    not DEFAULT_FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST idx files not at {DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)


def test_fashion_mnist_split_indices() -> None:
    train_idx, val_idx = fashion_mnist_split(60_000, seed=0)
    assert (len(train_idx), len(val_idx)) == (50_000, 10_000)
    train, val = set(train_idx.tolist()), set(val_idx.tolist())
    assert not (train & val) and train | val == set(range(60_000))
    again_train, again_val = fashion_mnist_split(60_000, seed=0)
    assert torch.equal(train_idx, again_train) and torch.equal(val_idx, again_val)
    _, other_val = fashion_mnist_split(60_000, seed=1)
    assert not torch.equal(val_idx, other_val)
    assert [len(v) for _, v in (fashion_mnist_split(n, 0) for n in (1, 5, 6, 600))] == [1, 1, 1, 100]


@needs_fashion
def test_real_fashion_mnist_three_splits() -> None:
    data = load_data("fashion-mnist", seed=0)
    (xtr, ytr), (xva, yva), (xte, yte) = (_tensors(ds) for ds in (data.train, data.val, data.test))
    assert (len(ytr), len(yva), len(yte)) == (50_000, 10_000, 10_000)
    assert (data.num_classes, data.input_shape) == (10, (1, 28, 28))

    root = DEFAULT_FASHION_MNIST_DIR
    raw_x = torch.from_numpy(read_idx(root / "train-images-idx3-ubyte.gz").copy())
    raw_y = torch.from_numpy(read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64))
    train_idx, val_idx = fashion_mnist_split(60_000, seed=0)

    def pixels(x: torch.Tensor) -> torch.Tensor:  # undo the normalisation
        return torch.round((x[:, 0] * 0.3530 + 0.2860) * 255).to(torch.uint8)

    # the splits are the training file's images at disjoint index sets covering all 60,000
    assert torch.equal(ytr, raw_y[train_idx]) and torch.equal(yva, raw_y[val_idx])
    assert torch.equal(pixels(xtr), raw_x[train_idx]) and torch.equal(pixels(xva), raw_x[val_idx])
    # and test is the official t10k file, whole
    t10k_y = torch.from_numpy(read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    assert torch.equal(yte, t10k_y) and torch.bincount(yte).tolist() == [1000] * 10
    assert torch.equal(pixels(xte), torch.from_numpy(read_idx(root / "t10k-images-idx3-ubyte.gz").copy()))

    again, other = load_data("fashion-mnist", seed=0), load_data("fashion-mnist", seed=1)
    assert torch.equal(_tensors(again.val)[0], xva) and torch.equal(_tensors(again.train)[1], ytr)
    assert not torch.equal(_tensors(other.val)[0], xva)
    assert torch.equal(_tensors(other.test)[0], xte)  # the test split does not depend on the seed


def test_synthetic_has_a_test_split() -> None:
    data = load_data("synthetic")
    sizes = tuple(len(_tensors(ds)[0]) for ds in (data.train, data.val, data.test))
    assert sizes == (512, 128, 128)
    assert not torch.equal(_tensors(data.val)[0], _tensors(data.test)[0])


# --- imagefolder and factories -----------------------------------------------------------------------


def _folders(root: Path, splits: dict[str, int]) -> None:
    from PIL import Image

    for split, per_class in splits.items():
        for cls, color in (("cat", 0), ("dog", 255)):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (12, 10), (color, i, 0)).save(root / split / cls / f"{i}.png")


def test_imagefolder_with_and_without_test(tmp_path: Path) -> None:
    _folders(tmp_path / "with", {"train": 3, "val": 2, "test": 1})
    data = load_data(f"imagefolder:{tmp_path / 'with'}")
    assert (len(data.train), len(data.val), len(data.test)) == (6, 4, 2)  # type: ignore[arg-type]
    assert data.has_test and data.num_classes == 2
    assert sum(len(y) for _, y in data.test_loader(batch_size=1)) == 2

    _folders(tmp_path / "without", {"train": 3, "val": 2})
    data = load_data(f"imagefolder:{tmp_path / 'without'}")
    assert data.test is None and not data.has_test
    with pytest.raises(ValueError, match="^data 'imagefolder:.*' has no test split$"):
        data.test_loader(batch_size=4)


def test_imagefolder_bad_test_folder(tmp_path: Path) -> None:
    _folders(tmp_path, {"train": 1, "val": 1})
    (tmp_path / "test").mkdir()  # no class folders
    with pytest.raises(ValueError, match="test/ needs one subfolder per class") as info:
        load_data(f"imagefolder:{tmp_path}")
    assert "\n" not in str(info.value)
    (tmp_path / "test").rmdir()
    (tmp_path / "test").write_text("not a folder")
    with pytest.raises(ValueError, match="test must be a folder"):
        load_data(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize(("factory", "test_size"), [("pair", None), ("triple", 9), ("pair_and_none", None)])
def test_factory_two_or_three_splits(factory: str, test_size: int | None) -> None:
    data = load_data(f"tests.evaluators.factories:{factory}")
    assert (len(data.train), len(data.val), data.num_classes) == (24, 6, 3)  # type: ignore[arg-type]
    assert data.has_test == (test_size is not None)
    assert (None if data.test is None else len(data.test)) == test_size  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "exc", "message"),
    [
        ("quadruple", InputTypeError, "must return \\(train, val\\) or \\(train, val, test\\), got a tuple of 4$"),
        ("not_a_pair", InputTypeError, "must return \\(train, val\\) or \\(train, val, test\\), got list$"),
        ("bad_test", InputTypeError, "must return datasets or DataLoaders, got list$"),
        ("empty_test", ValueError, "^test data of 'tests.evaluators.factories:empty_test' is empty$"),
    ],
)
def test_factory_bad_returns(factory: str, exc: type[Exception], message: str) -> None:
    spec = f"tests.evaluators.factories:{factory}"
    with pytest.raises(exc, match=message) as info:
        load_data(spec)
    assert "\n" not in str(info.value)
    if exc is InputTypeError:
        assert repr(spec) in str(info.value)


def test_databundle_keyword_construction_and_empty_test() -> None:
    ds = TensorDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    kw: dict = {"spec": "x", "train": ds, "val": ds, "in_channels": 1, "num_classes": 2, "input_shape": (1, 8, 8)}
    assert DataBundle(**kw).test is None
    assert DataBundle(**kw, test=ds).has_test
    with pytest.raises(ValueError, match="^test data of 'x' is empty$"):
        DataBundle(**kw, test=TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)))


# --- evaluating on a split -----------------------------------------------------------------------------


def _manual_accuracy(model: nn.Module, ds: object, n: int | None = None) -> float:
    x, y = _tensors(ds)
    x, y = x[:n], y[:n]
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_evaluate_accuracy_on_test_split(digits: DataBundle) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ctx = Context(data=digits, device=torch.device("cpu"), batch_size=50, max_val_samples=7)
    test_acc, test_loss = evaluate_accuracy(model, ctx, split="test")
    assert test_acc == pytest.approx(_manual_accuracy(model, digits.test))  # all 360: max_val_samples is val only
    assert test_loss > 0
    val_acc, _ = evaluate_accuracy(model, ctx)
    assert val_acc == pytest.approx(_manual_accuracy(model, digits.val, 7))
    assert evaluate_accuracy(model, ctx, split="val") == (val_acc, evaluate_accuracy(model, ctx)[1])
    assert Accuracy().evaluate(model, ctx).accuracy == val_acc  # the search's score stays on validation
    with pytest.raises(ValueError, match="split must be 'val' or 'test', got 'train'"):
        evaluate_accuracy(model, ctx, split="train")


def test_evaluate_accuracy_without_test_split() -> None:
    data = load_data("tests.evaluators.factories:pair")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    ctx = Context(data=data, device=torch.device("cpu"))
    assert 0.0 <= evaluate_accuracy(model, ctx)[0] <= 1.0
    with pytest.raises(ValueError, match="^data 'tests.evaluators.factories:pair' has no test split$"):
        evaluate_accuracy(model, ctx, split="test")


def test_baseline_key_changed_with_the_splits() -> None:
    # the key this baseline had under the old train/validation split (trained on 1,437 digits)
    assert baseline_key("zoo:resnet20", "digits", Recipe(), 0) != "e731bf493fadbaa6"
    assert baseline_key("zoo:resnet20", "digits", Recipe(), 0) == baseline_key("zoo:resnet20", "digits", Recipe(), 0)
