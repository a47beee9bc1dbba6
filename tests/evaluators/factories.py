"""Data factories used by the tests through 'package.module:factory' specs."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def small_loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 8, 8, generator=g)
    y = torch.arange(40) % 4
    return DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8), DataLoader(TensorDataset(x[32:], y[32:]))


def empty() -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)), TensorDataset(
        torch.zeros(2, 1, 8, 8), torch.zeros(2)
    )


def not_a_pair() -> list[int]:
    return [1, 2, 3]


def broken_model() -> None:
    raise RuntimeError("weights server unreachable")


def _small(n: int, offset: int) -> TensorDataset:
    g = torch.Generator().manual_seed(offset)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), (torch.arange(n) + offset) % 3)


def pair() -> tuple[TensorDataset, TensorDataset]:
    return _small(24, 0), _small(6, 1)


def triple() -> tuple[DataLoader, TensorDataset, DataLoader]:
    return DataLoader(_small(24, 0), batch_size=4), _small(6, 1), DataLoader(_small(9, 2))


def pair_and_none() -> tuple[TensorDataset, TensorDataset, None]:
    return _small(24, 0), _small(6, 1), None


def quadruple() -> tuple[TensorDataset, TensorDataset, TensorDataset, TensorDataset]:
    return _small(24, 0), _small(6, 1), _small(9, 2), _small(3, 3)


def empty_test() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    return _small(24, 0), _small(6, 1), _small(0, 2)


def bad_test() -> tuple[TensorDataset, TensorDataset, list[int]]:
    return _small(24, 0), _small(6, 1), [1, 2, 3]
