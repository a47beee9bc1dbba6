"""The ``decoder`` task: ``prunetune run`` on a config with ``task = "decoder"`` (see :mod:`search.tasks`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.tasks._base import Task
from search.tasks._decoder_config import decoder_flags, load_decoder_config
from search.tasks._decoder_view import decoder_front_table, front_by_memory, pick

if TYPE_CHECKING:
    from rich.console import Console

    from search.tasks._decoder_config import DecoderConfig
    from storage import StudyRecord, StudyStore

__all__ = ["DecoderTask"]


class DecoderTask(Task):
    """A decoder-only language model's widths and depth searched under a memory budget (module docs of
    :mod:`search.tasks._decoder_study`)."""

    name = "decoder"

    def flags(self) -> list[tuple[str, str, bool]]:
        return decoder_flags()

    def run(self, path: str, overrides: dict[str, Any], *, quiet: bool) -> int:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from search.tasks._decoder_study import DecoderStudy

        cfg = load_decoder_config(path, overrides)
        err, out = Console(stderr=True), Console()
        study = DecoderStudy(cfg)
        if cfg.search.backend == "ray":  # a cluster that cannot be reached fails before anything is written
            _needs_ray()
            from search.drivers._ray import connect

            connect(cfg.ray)
        with err.status(f"preparing study {study.name!r} (text, model, calibration)"):
            study.prepare()
        dense = study.dense_ppl
        err.print(
            f"study {study.name!r} in {study.store.display_url}: dense validation perplexity {dense:.3f}, "
            f"{len(study.space.groups)} groups, memory budget {cfg.budget.memory} of "
            f"{study.space.dense.memory_bytes:,} bytes (KV cache at {cfg.budget.context} x {cfg.budget.batch}); "
            f"candidates span {100 * study.floor / study.space.dense.memory_bytes:.1f}% to "
            f"{100 * study.cap / study.space.dense.memory_bytes:.1f}% of it"
        )
        columns = (TextColumn("[bold]candidates"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, disable=quiet) as bar:
            task = bar.add_task("run", total=cfg.search.candidates, completed=study.store.count(study.study_id))

            def progress(o: Any) -> None:
                bar.update(task, completed=min(o.total, cfg.search.candidates))

            try:
                if cfg.search.backend == "ray":
                    from search.tasks._decoder_ray import run_decoder_on_ray

                    res = run_decoder_on_ray(study, progress)
                else:
                    res = study.run(progress)
            except KeyboardInterrupt:
                study.store.release(study.study_id, study.worker, "interrupted by the user")
                raise
        for trial, before, after in res.rescored:
            err.print(f"trial {trial}: re-scored with {cfg.evaluate.rescore_steps} recovery steps: "
                      f"perplexity {before:.3f} -> {after:.3f}")  # fmt: skip
        front = study.front()
        title = f"Pareto front of {study.name!r} ({len(front)} of {res.total}): validation perplexity against memory"
        out.print(decoder_front_table(title, front, study.store.study(study.name)))
        mean = sum(res.seconds) / len(res.seconds) if res.seconds else 0.0
        out.print(f"this run: {res.evaluated} evaluated, {mean:.2f} s per candidate (recovery and perplexity)")
        return 0

    def check_submission(self, raw: Mapping[str, Any], factories: Collection[str]) -> DecoderConfig:
        """A submitted language-model study: the decoder schema; the teacher trained here, ``hf-tiny:`` models
        or an ``hf:`` directory the server lists; the server's store and the worker's artifacts folder."""
        from pydantic import ValidationError

        from search.tasks._base import SubmissionError
        from search.tasks._decoder_config import DecoderConfig, config_error

        try:
            cfg = DecoderConfig.model_validate(dict(raw))
        except ValidationError as exc:
            raise SubmissionError(str(config_error(exc, "submitted config"))) from None
        if not cfg.search.study:
            raise SubmissionError("submitted config: search.study must name the new study")
        spec, listed = cfg.model.spec, sorted(f for f in factories if f.startswith("hf:"))
        if not (spec == "teacher:stdlib" or spec.startswith("hf-tiny:") or spec in listed):
            takes = ", ".join(["teacher:stdlib", "hf-tiny:<family>", *listed])
            raise SubmissionError(f"submitted config: model.spec {spec!r} is not registered on this server; "
                                  f"it takes {takes}")  # fmt: skip
        for key, value in (("ray.address", cfg.ray.address), ("ray.node_ip", cfg.ray.node_ip)):
            if value is not None:
                raise SubmissionError(f"submitted config: {key} is the worker's to choose ({value!r}): leave it out")
        default = DecoderConfig.model_validate({"budget": {"memory": "50%"}})  # what a config that names neither has
        for section, key, what in (("search", "artifacts_dir", "the worker's"), ("storage", "url", "the server's")):
            value = getattr(getattr(cfg, section), key)
            if value != getattr(getattr(default, section), key):
                raise SubmissionError(
                    f"submitted config: {section}.{key} is {what} to choose ({value!r}): leave it out"
                )
        return cfg

    def run_submission(self, cfg: Any, store: StudyStore, artifacts_dir: str) -> None:
        from search.tasks._decoder_study import DecoderStudy

        cfg.storage.url, cfg.search.artifacts_dir = store.url, artifacts_dir
        DecoderStudy(cfg, store).prepare().run()

    def profile(self, path: str, overrides: dict[str, Any], *, runs: int, force: bool) -> int:
        """The model's latency model (:mod:`search.tasks._decoder_speed`), at the config's ``budget.context``."""
        import torch
        from rich.console import Console

        from search.tasks._decoder_speed import decoder_latency, show_decoder_latency
        from search.tasks._decoder_study import DecoderStudy

        study = DecoderStudy(load_decoder_config(path, overrides))
        space = study.structure_space()
        Console(stderr=True).print(  # before the long part, so the user knows what runs (Ctrl-C stops it)
            f"decoder latency model of {study.cfg.model.spec}: read from the store, or measured now (a minute or more)"
        )
        prof, measured = decoder_latency(space, study.store, threads=torch.get_num_threads(), runs=runs, force=force)
        how = "measured now and stored" if measured else "read from the store (measured before; --force measures again)"
        show_decoder_latency(Console(), prof, how=f"{how} in {study.store.display_url}")
        return 0

    def locate(self, path: str) -> tuple[str, str]:
        cfg = load_decoder_config(path)
        return cfg.storage.url, str(cfg.search.study)

    def show_front(self, console: Console, store: StudyStore, study: StudyRecord, *, plans: bool) -> None:
        rows = front_by_memory(store, study.id)
        title = f"Pareto front of {study.name!r} ({len(rows)} of {store.count(study.id)}): perplexity against memory"
        console.print(decoder_front_table(title, rows, study))
        if plans:
            for r in rows:
                console.print(f"trial {r.trial_number}: {r.plan}", soft_wrap=True, markup=False, highlight=False)

    def write_report(self, store: StudyStore, study: StudyRecord, out: Path) -> list[Path]:
        from search.tasks._decoder_report import write_decoder_report

        return write_decoder_report(store, study.name, out)

    def export(self, config: str | None, store: StudyStore, study: StudyRecord, trial: int, out: Path) -> list[str]:
        """The candidate as scored (its weights after the recovery) through :func:`export_decoder`: weights and
        plan, a ``transformers`` directory where the family's config can say the plan, ONNX in 32, 8 and 4 bits."""
        from search.operations._decoder_export import export_decoder
        from search.tasks._decoder_study import DecoderStudy
        from spaces import Plan, Status, UsageError

        if config is None:
            raise UsageError("a language-model study's export rebuilds its base model from the study's CONFIG: give it")
        row = next((r for r in store.candidates(study.id) if r.trial_number == trial), None)
        if row is None or row.status is not Status.COMPLETE:
            raise UsageError(f"study {study.name!r} has no COMPLETE trial {trial} (see `prunetune front`)")
        ds = DecoderStudy(load_decoder_config(config), store).load()
        student = ds.candidate_model(row)
        report = export_decoder(ds.model, Plan.from_json(row.plan), out, tokens=ds.text.heldout,
                                compressed=student, context=ds.cfg.evaluate.context)  # fmt: skip
        lines = [f"exported trial {trial} of {study.name!r} to {out}: model.safetensors, plan.json; hf: {report['hf']}"]
        for name, c in report["onnx"].items():
            lines.append(f"{name}: {c['bytes']:,} bytes, largest logit difference from torch {c['max_abs']:.2e}, "
                         f"top-1 next-token agreement {c['top1_agreement']:.1%} (held-out text)")  # fmt: skip
        return lines

    def page(self, store: StudyStore, study: StudyRecord, *, plotlyjs: str | None) -> tuple[str, dict[str, Any]]:
        import json

        from search.tasks._decoder_report import decoder_frame, decoder_page, front_figure

        df = decoder_frame(store, study)
        figure = json.loads(front_figure(df, study.space_options.get("dense")).to_json())
        return decoder_page(store, study, df=df, plotlyjs=plotlyjs), figure

    def show_status(self, console: Console, store: StudyStore, study: StudyRecord) -> None:

        rows = store.candidates(study.id)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        front = store.front(study.id)
        console.print(f"study {study.name!r} (language model): {study.model_spec} on {study.data_spec}")
        console.print(f"budget {study.budget}; memory of the dense model {study.base_cost['memory']:,.0f} bytes")
        console.print(f"candidates: {len(rows)} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
        console.print(f"front: {len(front)} candidates")
        best = pick(front)
        if best is not None and best.memory is not None:
            share = 100 * best.memory / study.base_cost["memory"]
            console.print(
                f"pick: trial {best.trial_number}, validation perplexity {best.perplexity:.3f} after "
                f"{best.top_steps} recovery steps, memory {share:.1f}%"
            )


def _needs_ray() -> None:
    """A one-line error where Ray Tune is not installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError("search.backend = \"ray\" needs Ray Tune: pip install 'prunetune[ray]'")
