"""The support matrix: one timm model per family, built offline, traced, and checked on the sampler's plans.

    .venv/bin/python scripts/support_matrix.py                  # print the table
    .venv/bin/python scripts/support_matrix.py --models resnet,vit --plans 8
    .venv/bin/python scripts/support_matrix.py --smoke          # two small models, in seconds (CI)
    .venv/bin/python scripts/support_matrix.py --write-docs     # and put it in docs/models.md between its markers

Each representative is built with ``pretrained=False`` at a small input size
(its timm arguments say which), then ``ModelSpace(model, x)`` traces it
(torch-pruning's dependency graph, PruneTune's groups and the self-check; a
refusal is reported with its one-line reason, which is how PruneTune declines
what it cannot do exactly), and :func:`spaces.support` makes its row:

* **prunable groups**: the groups the space prunes, of all the dependency
  groups torch-pruning finds (head groups for attentions); the others are
  **excluded**, counted by reason (grouped convolutions torch-pruning prunes
  wrongly, groups whose pruned model fails or removes the wrong channels
  downstream, ...);
* **factorizable layers** of the conv/linear layers called; **heads pruned**
  (attentions whose heads the space prunes, of all; n/a without attention);
* **plans checked**: ``--plans`` plans (at least 5) through the sampler's own
  mapping with the study's default ``[space]`` options and ``rank = true``:
  the most aggressive one it proposes (every group at ``max_ratio``, every
  factorizable layer at the lowest rank fraction) and random ones (every other
  with ranks). A plan is exact when the built model runs and its measured
  cost (MACs, params, bytes) equals the analytic one; the cell says
  ``5/5 exact`` or the first plan that was not, with what differs.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path
from typing import Any

import torch

from evaluators import build_model
from search._config import SpaceConfig
from spaces import ModelSpace, PruneTuneError, Support, first_line, support

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
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
SMOKE: dict[str, tuple[str, int]] = {
    "mobilenetv3": ("timm:mobilenetv3_small_050", 32),
    "vit": ("timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2", 32),
}
HEADER = ["family", "model @ input", "build s", *Support.CELLS]


def space_options() -> dict[str, Any]:
    """The study's default ``[space]`` options with ranks searched: what the sampler draws plans from."""
    return SpaceConfig.model_validate({"rank": {}}).options()


def row(family: str, spec: str, size: int, plans: int) -> list[str]:
    """The matrix's row of one family: build time and the space's support cells (or why it has none)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    try:
        model = build_model(spec, num_classes=10).eval()
        t = time.perf_counter()
        space = ModelSpace(model, x)
        build = f"{time.perf_counter() - t:.1f}"
    except Exception as exc:  # reported, the matrix goes on
        kind = "refused" if isinstance(exc, PruneTuneError) else f"error: {type(exc).__name__}"
        return [family, f"`{spec}` @{size}", "", "", "", "", "", f"{kind}: {first_line(exc, '')}"]
    return [family, f"`{spec}` @{size}", build, *support(space, space_options(), plans).cells()]


def table(families: dict[str, tuple[str, int]], plans: int) -> list[str]:
    """The Markdown lines: a line naming the versions, date and command, then the table (rows printed as made)."""
    import timm

    lines = [
        f"timm {timm.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{datetime.date.today()}, {plans} plans per model: `python scripts/support_matrix.py --plans {plans}`.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    print("\n".join(lines), flush=True)
    for family, (spec, size) in families.items():
        lines.append("| " + " | ".join(row(family, spec, size, plans)) + " |")
        print(lines[-1], flush=True)
    return lines


def _families(names: str) -> dict[str, tuple[str, int]]:
    chosen = [n for n in names.split(",") if n]
    unknown = [n for n in chosen if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"support_matrix: unknown family {', '.join(unknown)}; families: {', '.join(FAMILIES)}")
    return {n: FAMILIES[n] for n in chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default=",".join(FAMILIES), help=f"families, of {', '.join(FAMILIES)}")
    ap.add_argument("--plans", type=int, default=5, help="plans checked per model (at least 5)")
    ap.add_argument("--smoke", action="store_true", help="two small models at 32x32 (seconds; what CI runs)")
    ap.add_argument("--write-docs", action="store_true", help="replace docs/models.md's table with this one")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.plans < 5:
        raise SystemExit(f"support_matrix: --plans must be at least 5, got {args.plans}")
    torch.set_num_threads(args.threads)
    lines = table(SMOKE if args.smoke else _families(args.models), args.plans)
    if args.write_docs and not args.smoke:
        text = DOC.read_text()
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{START}\n{chr(10).join(lines)}\n{END}{tail}")


if __name__ == "__main__":
    main()
