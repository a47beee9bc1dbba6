"""Data factories for the search tests ('tests.search.datafactories:NAME' specs)."""

from __future__ import annotations

from torch.utils.data import Dataset, TensorDataset

from evaluators import load_data


def digits_three() -> tuple[Dataset, Dataset, Dataset]:
    """scikit-learn's digits, split train/validation/test as the `digits` spec splits them."""
    data = load_data("digits")
    assert data.test is not None
    return data.train, data.val, data.test


def digits_wrong_test_labels() -> tuple[Dataset, Dataset, Dataset]:
    """The same, with every test label wrong: (label + 1) mod 10."""
    train, val, test = digits_three()
    x, y = test.tensors  # type: ignore[attr-defined]
    return train, val, TensorDataset(x, (y + 1) % 10)
