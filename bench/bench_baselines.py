"""Train the baselines the product starts from and report accuracy and seconds.

    .venv/bin/python bench/bench_baselines.py [--digits-epochs 30] [--fmnist-epochs 5] [--skip-fmnist]
    .venv/bin/python bench/bench_baselines.py --smoke   # CI's size: digits, one epoch

Every baseline is trained afresh into a temp dir (deleted at the end), with
the recipe, seed and cache keys the service uses.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile

import torch
from _shared import parse  # bench/, beside this script

from evaluators import Recipe, load_data, train_baseline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits-epochs", type=int, default=Recipe().epochs)
    ap.add_argument("--fmnist-epochs", type=int, default=5)
    ap.add_argument("--skip-fmnist", action="store_true")
    args = parse(ap, {"digits_epochs": 1, "skip_fmnist": True})
    if args.smoke:
        torch.set_num_threads(1)  # as the other smoke runs: a shared runner's second core is not ours
    root = tempfile.mkdtemp(prefix="prunetune-bench-")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| data | model | recipe | val accuracy | seconds |")
    print("|---|---|---|---|---|")
    runs = [("digits", "zoo:resnet20", Recipe(epochs=args.digits_epochs))]
    if not args.skip_fmnist:
        runs.append(("fashion-mnist", "zoo:resnet20", Recipe(epochs=args.fmnist_epochs, batch_size=128, lr=0.1)))
    for data_spec, model_spec, recipe in runs:
        data = load_data(data_spec)
        b = train_baseline(model_spec, data, recipe=recipe, artifacts_dir=root, device="cpu", progress=True)
        text = f"{recipe.epochs} ep, bs {recipe.batch_size}, lr {recipe.lr}"
        print(f"| {data_spec} | {model_spec} | {text} | {b.accuracy:.2%} | {b.seconds:.0f} |", flush=True)
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
