"""``prunetune profile CONFIG``: measure (or show) the study's device profile on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from search.cli._commands import add_config_flags, overrides

__all__ = ["add_profile_command", "cmd_profile"]


def add_profile_command(sub: Any) -> None:
    prof = sub.add_parser(
        "profile",
        help="measure this machine's per-layer latency tables for a study's model (stored, reused by every study)",
        description="Times every conv and linear layer of the config's model over the channel counts plans can "
        "give it, the rest of the model at four uniform plans, and the channel multiple beyond which this machine "
        "gains no speed, in the config's evaluate.runtime (torch eager, or onnxruntime: the model exported), and "
        "with space.rank the factor chains of the searched methods over channels and ranks; "
        "stores the profile in the config's store, keyed by model, device, runtime, threads and "
        'batch size. A study with a budget.latency limit, the latency objective or space.round_to = "auto" reads '
        'it (or measures it). A language-model config (task = "decoder") gets its own latency model instead: '
        "the model built at two dozen plans, prefill of budget.context tokens and decode with the KV cache timed, "
        "and a linear model of the kept layers, projection and attention MACs fitted to them (held-out plans "
        "check it); its studies with evaluate.speed = true predict every candidate's tokens per second with it. "
        "Every config key can be overridden as in `run`: --section.key VALUE.",
    )
    prof.add_argument("config", help="the run's TOML config (model, data, storage, evaluate.threads/device/runtime)")
    prof.add_argument("--runs", type=int, default=7, help="timed calls per point, the median kept (default 7)")
    prof.add_argument(
        "--batch", type=int, default=1, help="batch size to profile (default 1, what studies read; others: for a look)"
    )
    prof.add_argument("--force", action="store_true", help="measure again even if the store holds a profile")
    add_config_flags(prof)  # the same --section.key overrides as `run`, so both read the same study settings
    prof.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from evaluators import resolve_device
    from search._config import load_config
    from search.preparation._profile import device_profile, predicts_latency, profiled_methods, structure_space
    from search.tasks import TASKS, VISION, task_of
    from spaces import UsageError
    from storage import StudyStore

    if args.runs < 1 or args.batch < 1:
        raise UsageError(f"--runs and --batch must be at least 1, got {args.runs} and {args.batch}")
    if (kind := task_of(args.config)) != VISION:  # a plug-in task's own latency model (a decoder's)
        if args.batch != 1:
            raise UsageError(f"a task = {kind!r} config is profiled at batch 1, got --batch {args.batch}")
        return TASKS.get(kind).profile(args.config, overrides(args), runs=args.runs, force=args.force)
    cfg = load_config(args.config, overrides(args))
    store = StudyStore(cfg.storage.url)
    if cfg.evaluate.threads is not None:
        torch.set_num_threads(cfg.evaluate.threads)
    space = structure_space(cfg)
    device = resolve_device(cfg.evaluate.device)
    Console(stderr=True).print(  # before the long part, so the user knows what runs (Ctrl-C stops it)
        f"device profile of {cfg.model.spec} on {device}: read from the store, or measured now (a minute or more)"
    )
    prof, measured = device_profile(
        space,
        store,
        device=device,
        threads=torch.get_num_threads(),
        batch=args.batch,
        runs=args.runs,
        force=args.force,
        runtime=cfg.evaluate.runtime,
        methods=profiled_methods(cfg) if predicts_latency(cfg) else [],
    )
    c = Console()
    how = "measured now and stored" if measured else "read from the store (measured before; --force measures again)"
    c.print(f"device profile of {cfg.model.spec} on {prof.device}, {prof.runtime}, {prof.threads} threads, "
            f"batch {prof.batch}: {how} in {store.display_url}")  # fmt: skip
    chains = f"{len(prof.factored)} with factor chains ({', '.join(prof.methods)})" if prof.factored else "no chains"
    c.print(f"{len(prof.layers)} layer tables, {chains}; tables x {prof.scale:.2f} in context")
    c.print(f"base model {prof.base_ms:.3f} ms measured; rest {prof.rest[0]:.3f} ms + {prof.rest[1]:.3f} ms x "
            "activations kept")  # fmt: skip
    c.print(f'channel multiple {prof.multiple} (round_to = "auto"); largest non-monotone step removed '
            f"{100 * prof.noise:.0f} %")  # fmt: skip
    table = Table(title="calibration: the whole model at uniform plans")
    for col in ("prune ratio", "measured ms", "predicted ms", "error"):
        table.add_column(col, justify="right")
    for ratio, meas, pred in prof.calibration:
        table.add_row(f"{ratio:.2f}", f"{meas:.3f}", f"{pred:.3f}", f"{100 * (pred - meas) / meas:+.1f} %")
    c.print(table)
    return 0
