"""The support matrix: one timm model per family, built offline, traced, pruned and factorized, costs checked.

    .venv/bin/python scripts/support_matrix.py                  # print the table
    .venv/bin/python scripts/support_matrix.py --write-readme   # and put it in README.md between its markers
    .venv/bin/python scripts/support_matrix.py --models resnet,vit

Each representative is built with ``pretrained=False`` at a small input size
(its timm arguments say which), then:

1. ``ModelSpace(model, x)``: torch-pruning's dependency graph, PruneTune's
   groups and the self-verification (a refusal is reported with its one-line
   reason, which is how PruneTune declines what it cannot do exactly);
2. a **prune** plan (every group at 30 %) applied, and its analytic cost
   compared with the measured one (MACs, params, bytes);
3. a **prune + rank** plan (the same pruning, every factorizable layer at half
   its full SVD rank) likewise.

"exact" means the model ran and analytic = measured; "refused" is a
:class:`spaces.PruneTuneError` (its first line is shown); "error" is anything
else (a bug to fix). The README's table names the date and timm's version.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

from evaluators import build_model
from spaces import ModelSpace, Plan, PruneTuneError, first_line, measure_cost

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"

# family -> (timm spec, input size)
FAMILIES: dict[str, tuple[str, int]] = {
    "resnet": ("timm:resnet18", 64),
    "resnext": ("timm:resnext26ts", 64),
    "regnet": ("timm:regnetx_002", 64),
    "efficientnet": ("timm:efficientnet_b0", 64),
    "mobilenetv3": ("timm:mobilenetv3_small_100", 64),
    "mobilevit": ("timm:mobilevit_xxs", 64),
    "convnext": ("timm:convnext_atto", 64),
    "vit": ("timm:vit_tiny_patch16_224,img_size=64", 64),
    "deit": ("timm:deit_tiny_patch16_224,img_size=64", 64),
    "swin": ("timm:swin_tiny_patch4_window7_224", 224),
    "maxvit": ("timm:maxvit_tiny_tf_224", 224),
    "levit": ("timm:levit_128s", 224),
}


def _check(space: ModelSpace, plan: Plan, x: torch.Tensor) -> str:
    model = space.apply(plan).eval()
    with torch.no_grad():
        model(x)
    analytic, measured = space.cost(plan), measure_cost(model, x)
    if analytic == measured:
        return "exact"
    return (
        f"error: analytic {analytic.macs} MACs / {analytic.params} params, measured {measured.macs} / {measured.params}"
    )


def _outcome(exc: Exception) -> str:
    """A refusal (PruneTune declining what it cannot do exactly) or an error (a bug to fix), in one line."""
    if isinstance(exc, PruneTuneError):
        return f"refused: {first_line(exc, '')}"
    return f"error: {type(exc).__name__}: {first_line(exc, '')}"


def row(family: str, spec: str, size: int) -> list[str]:
    """The matrix's row of one family: build time, groups, the two plans' outcomes."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    try:
        model = build_model(spec, num_classes=10).eval()
        t = time.perf_counter()
        space = ModelSpace(model, x)
        build = f"{time.perf_counter() - t:.1f}"
    except Exception as exc:  # reported, the matrix goes on
        return [family, f"`{spec}` @{size}", "", "", _outcome(exc), ""]
    prune = Plan(prune={g.id: 0.3 for g in space.groups})
    joint = Plan(prune=prune.prune, rank={g.name: 0.5 for g in space.layers})
    outcomes = []
    for plan in (prune, joint):
        try:
            outcomes.append(_check(space, plan, x))
        except Exception as exc:
            outcomes.append(_outcome(exc))
    return [family, f"`{spec}` @{size}", build, str(len(space.groups)), *outcomes]


def main() -> None:
    import timm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(FAMILIES), help=f"families, of {', '.join(FAMILIES)}")
    ap.add_argument("--write-readme", action="store_true", help="replace the README's table with this one")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row(f, *FAMILIES[f]) for f in args.models.split(",")]
    header = ["family", "model @ input", "build s", "groups", "prune plan", "prune + rank plan"]
    lines = [
        f"timm {timm.__version__}, torch {torch.__version__}, {datetime.date.today()}: "
        "`python scripts/support_matrix.py --write-readme` regenerates it.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    print("\n".join(lines))
    if args.write_readme:
        text = README.read_text()
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        README.write_text(f"{head}{START}\n{chr(10).join(lines)}\n{END}{tail}")


if __name__ == "__main__":
    main()
