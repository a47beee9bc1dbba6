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
