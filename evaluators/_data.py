"""Offline datasets: built-in digits / Fashion-MNIST / synthetic, and user data.

Every spec gives three splits: **train** (baseline training and fine-tunes),
**validation** (what the search scores and selects candidates on) and **test**
(held out, only for reported numbers; optional for user data).

Specs (nothing is ever downloaded):

* ``digits`` — scikit-learn's 1,797 real 8x8 digits, a seeded stratified
  train/val/test split (``val_fraction`` and ``test_fraction`` of the whole,
  by default 0.2 each: 1,077 / 360 / 360);
* ``fashion-mnist`` — the standard idx files (``train-images-idx3-ubyte.gz`` ...)
  from ``data_dir``, by default where Debian's ``dataset-fashion-mnist``
  package puts them (``/usr/share/datasets/fashion-mnist``): validation is a
  seeded 10,000-image subset of the 60,000 training images, train the other
  50,000, test the official 10,000 ``t10k`` images;
* ``synthetic`` — torchvision's ``FakeData`` (random images), for smoke tests
  only: 512 / 128 / 128;
* ``imagefolder:/path`` — ``train/`` and ``val/`` folders (and, optionally,
  ``test/``) in torchvision ``ImageFolder`` layout;
* ``package.module:factory`` — a callable returning ``(train, val)`` or
  ``(train, val, test)`` datasets or DataLoaders.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from spaces import InputTypeError, first_line

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "DataBundle", "fashion_mnist_split", "load_data", "read_idx"]

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530
FASHION_MNIST_VAL_SIZE = 10_000

Splits = tuple[Dataset, Dataset, Dataset | None]


@dataclass
class DataBundle:
    """The three splits with what a model needs to know about them.

    ``train`` trains baselines and fine-tunes candidates; ``val`` is what the
    search scores and selects on; ``test`` (``None`` when the data has none,
    see ``has_test``) is held out for reported numbers only. None of them may
    be empty.
    """

    spec: str
    train: Dataset
    val: Dataset
    in_channels: int
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    test: Dataset | None = None
    seed: int = 0  # the split's seed (digits, fashion-mnist): part of a cached baseline's key

    def __post_init__(self) -> None:
        splits = (("training", self.train), ("validation", self.val), ("test", self.test))
        for name, ds in splits:
            if ds is not None and len(ds) == 0:  # type: ignore[arg-type]
                raise ValueError(f"{name} data of {self.spec!r} is empty")

    @property
    def has_test(self) -> bool:
        return self.test is not None

    def hold_out_pool(self, n: int) -> Dataset:
        """Take ``n`` training images, drawn at random (seeded by the split's ``seed``), out of ``train`` and
        return them: a pool no fine-tune uses.

        The teacher-referenced scores (:class:`evaluators.TeacherPool`) read the
        pool; ``train`` keeps the rest, in its order (a training split of ``n``
        or fewer images is a one-line error). Drawn at random, not the last
        ``n``: a folder of images is listed class by class. Call it once, after
        the baseline is trained.
        """
        size = len(self.train)  # type: ignore[arg-type]
        if not 0 < n < size:
            raise ValueError(f"a teacher pool of {n} images needs 0 < n < {size}, the training images of {self.spec!r}")
        chosen = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed))[:n]
        keep = torch.ones(size, dtype=torch.bool)
        keep[chosen] = False
        pool = Subset(self.train, sorted(chosen.tolist()))
        self.train = Subset(self.train, torch.nonzero(keep).flatten().tolist())
        return pool

    def train_loader(self, batch_size: int, seed: int, *, shuffle: bool = True) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.train, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=False)

    def val_loader(self, batch_size: int, max_samples: int | None = None) -> DataLoader:
        ds = self.val
        if max_samples is not None and max_samples < len(ds):  # type: ignore[arg-type]
            ds = Subset(ds, range(max_samples))
        return DataLoader(ds, batch_size=batch_size, shuffle=False)

    def test_loader(self, batch_size: int, max_samples: int | None = None) -> DataLoader:
        if self.test is None:
            raise ValueError(f"data {self.spec!r} has no test split")
        ds = self.test
        if max_samples is not None and max_samples < len(ds):  # type: ignore[arg-type]
            ds = Subset(ds, range(max_samples))
        return DataLoader(ds, batch_size=batch_size, shuffle=False)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)


def _endless(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped), the MNIST/Fashion-MNIST format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{str(path)!r} is not an idx file")
    codes: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype = codes.get(data[2])
    if dtype is None:
        raise ValueError(f"{str(path)!r} has unknown idx type code {data[2]:#x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} is truncated: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _digits(seed: int, val_fraction: float, test_fraction: float) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            "digits needs 0 < val_fraction, 0 < test_fraction and val_fraction + test_fraction < 1, "
            f"got val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    n = len(y)
    n_test, n_val = math.ceil(test_fraction * n), math.ceil(val_fraction * n)
    # test first (stratified on everything), then validation out of the rest (stratified again)
    xrest, xte, yrest, yte = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    xtr, xva, ytr, yva = train_test_split(xrest, yrest, test_size=n_val, stratify=yrest, random_state=seed)
    return (
        TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr).long()),
        TensorDataset(torch.from_numpy(xva), torch.from_numpy(yva).long()),
        TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte).long()),
    )


def fashion_mnist_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into the ``n`` Fashion-MNIST training images: a seeded
    random 10,000 (a sixth of them, at least one, when there are fewer than 60,000) for
    validation, the rest for training; both sorted, disjoint, covering ``range(n)``."""
    n_val = min(FASHION_MNIST_VAL_SIZE, max(1, n // 6))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _fashion_mnist(data_dir: Path | None, seed: int) -> Splits:
    root = Path(data_dir) if data_dir is not None else DEFAULT_FASHION_MNIST_DIR
    raw: list[tuple[np.ndarray, np.ndarray]] = []
    for prefix in ("train", "t10k"):
        imgs = labels = None
        for suffix in (".gz", ""):
            ip = root / f"{prefix}-images-idx3-ubyte{suffix}"
            lp = root / f"{prefix}-labels-idx1-ubyte{suffix}"
            if ip.is_file() and lp.is_file():
                imgs, labels = read_idx(ip), read_idx(lp)
                break
        if imgs is None or labels is None:
            raise ValueError(
                f"Fashion-MNIST idx files not found in {str(root)!r}: install them with "
                "'apt-get install dataset-fashion-mnist' (Debian) or pass --data-dir with "
                f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz"
            )
        raw.append((imgs, labels))

    def dataset(imgs: np.ndarray, labels: np.ndarray) -> TensorDataset:
        x = (torch.from_numpy(imgs.astype(np.float32) / 255.0) - _FMNIST_MEAN) / _FMNIST_STD
        return TensorDataset(x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    (train_imgs, train_labels), (test_imgs, test_labels) = raw
    train_idx, val_idx = (i.numpy() for i in fashion_mnist_split(len(train_labels), seed))
    return (
        dataset(train_imgs[train_idx], train_labels[train_idx]),
        dataset(train_imgs[val_idx], train_labels[val_idx]),
        dataset(test_imgs, test_labels),
    )


def _synthetic(seed: int) -> Splits:
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    out = []
    for offset, size in ((0, 512), (10_000, 128), (20_000, 128)):
        fake = FakeData(
            size=size, image_size=(3, 32, 32), num_classes=10, transform=ToTensor(), random_offset=seed + offset
        )
        xs, ys = zip(*(fake[i] for i in range(size)), strict=True)
        out.append(TensorDataset(torch.stack(xs), torch.tensor(ys, dtype=torch.long)))
    return out[0], out[1], out[2]


def _imagefolder(path: str) -> Splits:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    root = Path(path)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(f"imagefolder {str(root)!r} must contain {split}/ (one subfolder per class)")
    if (root / "test").exists() and not (root / "test").is_dir():
        raise ValueError(f"imagefolder {str(root)!r}: test must be a folder (one subfolder per class), not a file")
    splits = ["train", "val"] + (["test"] if (root / "test").is_dir() else [])
    out: list[Dataset] = []
    for split in splits:
        try:
            out.append(ImageFolder(str(root / split), transform=ToTensor()))
        except (FileNotFoundError, OSError) as exc:  # no class folders, or class folders without images
            raise ValueError(
                f"imagefolder {str(root)!r}: {split}/ needs one subfolder per class holding images "
                f"(.png, .jpg, ...): {first_line(exc)}"
            ) from None
    return out[0], out[1], out[2] if len(out) == 3 else None


def _factory(spec: str) -> Splits:
    from evaluators._models import import_factory

    result = import_factory(spec, "data")()
    if not (isinstance(result, tuple) and len(result) in (2, 3)):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise InputTypeError(f"data factory {spec!r} must return (train, val) or (train, val, test), got {got}")

    def dataset(part: object) -> Dataset:
        if isinstance(part, DataLoader):
            part = part.dataset
        if not isinstance(part, Dataset):
            raise InputTypeError(
                f"data factory {spec!r} must return datasets or DataLoaders, got {type(part).__name__}"
            )
        return part

    test = result[2] if len(result) == 3 else None  # (train, val, None) also means: no test split
    return dataset(result[0]), dataset(result[1]), None if test is None else dataset(test)


def _num_classes(train: Dataset, val: Dataset) -> int:
    classes = getattr(train, "classes", None)
    if classes is not None:
        return len(classes)
    if isinstance(train, TensorDataset):
        return int(train.tensors[1].max()) + 1
    labels = [int(val[i][1]) for i in range(len(val))]  # type: ignore[arg-type]
    labels += [int(train[i][1]) for i in range(min(len(train), 10_000))]  # type: ignore[arg-type]
    return max(labels) + 1


def load_data(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> DataBundle:
    """Load the data named by ``spec`` (see the module docs).

    ``seed`` picks the digits and Fashion-MNIST splits; ``val_fraction`` and
    ``test_fraction`` (of the whole) apply to digits only.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data spec must be a non-empty string, got {spec!r}")
    test: Dataset | None
    if spec == "digits":
        train, val, test = _digits(seed, val_fraction, test_fraction)
    elif spec in ("fashion-mnist", "fashion_mnist"):
        train, val, test = _fashion_mnist(Path(data_dir) if data_dir else None, seed)
    elif spec == "synthetic":
        train, val, test = _synthetic(seed)
    elif spec.startswith("imagefolder:"):
        train, val, test = _imagefolder(spec.partition(":")[2])
    elif ":" in spec:
        train, val, test = _factory(spec)
    else:
        raise ValueError(
            f"unknown data spec {spec!r}; use digits, fashion-mnist, synthetic, imagefolder:/path "
            "or package.module:factory"
        )
    for which, ds in (("training", train), ("validation", val), ("test", test)):
        if ds is not None and len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{which} data of {spec!r} is empty")
    x0 = train[0][0]
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise InputTypeError(f"samples of {spec!r} must be (tensor [C, ...], label), got {type(x0).__name__}")
    return DataBundle(
        spec=spec,
        train=train,
        val=val,
        in_channels=int(x0.shape[0]),
        num_classes=_num_classes(train, val),
        input_shape=tuple(x0.shape),
        test=test,
        seed=seed,
    )
