from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators import DEFAULT_FASHION_MNIST_DIR, load_data, read_idx


def test_digits_is_a_seeded_stratified_split() -> None:
    a, b = load_data("digits", seed=0), load_data("digits", seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (1077, 360, 360)  # type: ignore[arg-type]
    assert (a.in_channels, a.num_classes, a.input_shape) == (1, 10, (1, 8, 8))
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])  # type: ignore[attr-defined]
    counts = torch.bincount(a.val.tensors[1], minlength=10)  # type: ignore[attr-defined]
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each digit
    c = load_data("digits", seed=1)
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])  # type: ignore[attr-defined]


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_and_fashion_mnist_layout(tmp_path: Path) -> None:
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.array([0, 9, 3]))
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    data = load_data("fashion-mnist", data_dir=tmp_path)
    # 3 training images: 1 carved off for validation, t10k is the test split
    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 3)  # type: ignore[arg-type]
    assert (data.input_shape, data.num_classes) == ((1, 28, 28), 10)
    x, y = data.test[1]  # type: ignore[index]
    assert int(y) == 9
    assert float(x[0, 0, 0]) == pytest.approx((imgs[1, 0, 0] / 255 - 0.2860) / 0.3530, rel=1e-5)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    data = load_data("fashion-mnist")
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (50000, 10000, 10000, 10)  # type: ignore[arg-type]
    counts = torch.bincount(data.test.tensors[1])  # type: ignore[union-attr]
    assert counts.tolist() == [1000] * 10


def test_synthetic_factory_and_imagefolder(tmp_path: Path) -> None:
    syn = load_data("synthetic")
    assert (syn.input_shape, syn.num_classes) == ((3, 32, 32), 10)
    fac = load_data("tests.evaluators.factories:small_loaders")
    assert (len(fac.train), len(fac.val), fac.num_classes, fac.in_channels) == (32, 8, 4, 3)
    from PIL import Image

    for split in ("train", "val"):
        for cls, color in (("cat", 0), ("dog", 255)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 10), (color, i, 0)).save(tmp_path / split / cls / f"{i}.png")
    folder = load_data(f"imagefolder:{tmp_path}")
    assert (len(folder.train), folder.num_classes, folder.input_shape) == (4, 2, (3, 10, 12))


@pytest.mark.parametrize(
    ("spec", "exc", "message"),
    [
        ("mnist", ValueError, "unknown data spec 'mnist'"),
        ("tests.evaluators.factories:empty", ValueError, "training data of .* is empty"),
        ("tests.evaluators.factories:not_a_pair", TypeError, "must return \\(train, val\\) or \\(train, val, test\\)"),
        ("no_such.module:f", ValueError, "cannot import module"),
        ("imagefolder:/nonexistent", ValueError, "must contain train/"),
    ],
)
def test_bad_data_specs(spec: str, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        load_data(spec)
