"""Baseline training, cached as safetensors under the artifacts directory."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evaluators._base import Context, check_model_fits, resolve_device, seed_everything
from evaluators._data import DataBundle
from evaluators._evaluators import _prepare, _progress, evaluate_accuracy, training_steps
from evaluators._models import build_model, save_weights

__all__ = ["Baseline", "Recipe", "baseline_key", "train_baseline"]


@dataclass(frozen=True)
class Recipe:
    """SGD (Nesterov) with a linear warm-up and a cosine decay to zero, seeded."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"recipe needs epochs >= 1, batch_size >= 1 and lr > 0, got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, lr={self.lr}"
            )


@dataclass
class Baseline:
    model: nn.Module
    accuracy: float
    seconds: float
    path: Path
    cached: bool


# The data layout baselines are trained under: 3 = train / validation / test (the
# built-in specs' training splits are smaller than under the old train / validation
# split, so no baseline cached before it, trained on other data, is ever reused).
SPLITS_VERSION = 3


def baseline_key(model_spec: str, data_spec: str, recipe: Recipe, seed: int, data_seed: int = 0) -> str:
    """The cache key of a baseline: model, data spec, recipe, training seed, split layout and split seed."""
    text = json.dumps(
        {
            "model": model_spec,
            "data": data_spec,
            "recipe": asdict(recipe),
            "seed": seed,
            "splits": SPLITS_VERSION,
            "split_seed": data_seed,
            "v": 1,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_baseline(
    model_spec: str,
    data: DataBundle,
    *,
    recipe: Recipe | None = None,
    seed: int = 0,
    artifacts_dir: str | Path = "artifacts",
    device: str | torch.device | None = "auto",
    progress: bool = False,
) -> Baseline:
    """Train ``model_spec`` on ``data`` (or reuse the cached weights for the same spec, data, recipe and seed)."""
    from safetensors.torch import load_file

    recipe = recipe or Recipe()
    dev = resolve_device(device)
    key = baseline_key(model_spec, data.spec, recipe, seed, data.seed)
    path = Path(artifacts_dir) / "baselines" / f"{key}.safetensors"
    meta_path = path.with_suffix(".json")
    seed_everything(seed)
    model = build_model(model_spec, in_channels=data.in_channels, num_classes=data.num_classes)
    context = Context(data=data, device=dev, seed=seed, batch_size=256)
    check_model_fits(model, context)
    if path.is_file() and meta_path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            meta = json.loads(meta_path.read_text())
            accuracy, seconds = float(meta["accuracy"]), float(meta["seconds"])
        except Exception as exc:  # a damaged cache is the user's to remove, never silently reused
            raise ValueError(
                f"the cached baseline {str(path)!r} is damaged ({type(exc).__name__}): delete it and "
                f"{meta_path.name} to train the baseline again"
            ) from None
        return Baseline(_prepare(model, context).eval(), accuracy, seconds, path, True)
    t = time.perf_counter()
    _fit(model, data, recipe, seed, dev, progress)
    accuracy, _ = evaluate_accuracy(model, context)
    seconds = time.perf_counter() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = {"train": len(data.train), "val": len(data.val), "test": None if data.test is None else len(data.test)}  # type: ignore[arg-type]
    meta = {"model": model_spec, "data": data.spec, "recipe": asdict(recipe), "seed": seed, "split_sizes": sizes}
    meta_path.write_text(json.dumps({**meta, "accuracy": accuracy, "seconds": seconds}, indent=2))
    save_weights(model, path)  # the weights appear only when complete
    return Baseline(model.eval(), accuracy, seconds, path, False)


def _fit(model: nn.Module, data: DataBundle, recipe: Recipe, seed: int, dev: torch.device, progress: bool) -> None:
    _prepare(model, Context(data=data, device=dev))
    seed_everything(seed)
    loader = data.train_loader(recipe.batch_size, seed)
    total = recipe.epochs * len(loader)
    warm = max(1, int(recipe.warmup_fraction * total))
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=True
    )

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def loss_of(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(x).float(), y, label_smoothing=recipe.label_smoothing)

    def check(step: int, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"baseline training diverged (loss {value}); lower the recipe's lr")

    batches = (batch for _ in range(recipe.epochs) for batch in loader)
    with _progress(progress, total, "baseline") as bar:
        for _ in training_steps(model, batches, opt, sched, loss_of, dev, check):
            bar(1)
    model.eval()
