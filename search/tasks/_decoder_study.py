"""A language-model study: per-layer widths (and depth) of a decoder searched under a memory budget.

The steps, each on the real objects the vision pipeline uses:

1. **Prepare** (nothing is written before every check passed): the text
   (:func:`evaluators._text.stdlib_text`: train, calibration, validation,
   held-out, disjoint by file), the model (the teacher trained here and cached,
   or a local ``hf:`` directory), its :class:`spaces.decoder.DecoderSpace` at
   the budget's context and batch with Wanda-sp scores read on the calibration
   split, the memory limit (a budget below the smallest plan is a one-line
   error), then the study's row in the store and its Optuna study.
2. **Seed plans** go first: the uniform plan (LLM-Pruner's setting) and the
   global-importance plan (FLAP / Wanda-sp) at the cap, and the global plan at
   the floor, so that the front spans the memory range from the start.
3. **Sampled plans**: the sampler proposes a memory target between
   ``search.floor`` and the cap, one prune ratio per layer's MLP and per
   layer's key-value groups, and (``space.depth``) which layers to drop;
   :meth:`~spaces.decoder.DecoderSpace.fit` shifts the ratios onto the target.
4. **Each candidate** is applied to a copy of the model, recovered for
   ``evaluate.recovery_steps`` steps on the train split, distilled from the
   dense model (``evaluate.kd_weight``), and scored by **perplexity on the
   validation split** (what the search selects on; the held-out split is only
   read by ``bench/bench_llm.py``). The store records its perplexity, memory
   (weights plus KV cache), weight bytes, parameters and prefill MACs per token,
   and rewrites the Pareto front (perplexity against memory) in the same
   transaction.

A stopped run releases its candidate; the next run evaluates it first and
continues the Optuna study.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.tasks._decoder_config import share_of
from search.tasks._decoder_view import front_by_memory, pick
from spaces import CandidateKind, Objective, Plan, PlanError, Status

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from evaluators._text import TextSplits
    from search.tasks._decoder_config import DecoderConfig
    from spaces.decoder import DecoderLatency, DecoderSpace
    from storage import CandidateRow, StudyStore

__all__ = ["OBJECTIVES", "DecoderStudy", "Outcome", "pick"]

OBJECTIVES = (Objective.PERPLEXITY, Objective.MEMORY)


@dataclass
class Outcome:
    """What one run did: candidates evaluated now, and the study's total."""

    evaluated: int = 0
    total: int = 0
    seconds: list[float] = field(default_factory=list)
    rescored: list[tuple[int, float, float]] = field(default_factory=list)  # trial, first and longer perplexity


class DecoderStudy:
    """One process running a decoder study (see the module docs)."""

    def __init__(self, cfg: DecoderConfig, store: StudyStore | None = None) -> None:
        from storage import StudyStore

        self.cfg = cfg
        self.store = store or StudyStore(cfg.storage.url)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.name: str = cfg.search.study or "decoder"
        self.artifacts = Path(cfg.search.artifacts_dir).resolve() / "studies" / self.name
        self.latency: DecoderLatency | None = None  # evaluate.speed: the model's latency model (prepare)

    # ------------------------------------------------------------------ prepare
    def load(self) -> DecoderStudy:
        """Load the text, the model and its space (what an export of a stored candidate needs too)."""
        from evaluators._text import stdlib_text
        from spaces.decoder import DecoderSpace

        cfg = self.cfg
        self.text: TextSplits = stdlib_text(max_bytes=cfg.data.max_bytes)
        self.model: nn.Module = self._model()
        self.space: DecoderSpace = DecoderSpace(
            self.model, context=cfg.budget.context, batch=cfg.budget.batch, max_ratio=cfg.space.max_ratio
        )
        return self

    def attach(
        self, space: DecoderSpace, text: TextSplits, latency: DecoderLatency | None, study_id: int
    ) -> DecoderStudy:
        """The study as another process prepared it (its space, scores included, its text, latency model and
        row): what a Ray trial recovers candidates with (:mod:`search.tasks._decoder_ray`)."""
        self.space, self.model, self.text, self.latency = space, space.model, text, latency
        self.study_id = study_id
        self.optuna = self._optuna()
        return self

    def prepare(self) -> DecoderStudy:
        """Load text, model and space, check the budget, then create (or reopen) the study."""
        from spaces.factorization import factor_method

        cfg = self.load().cfg
        windows, length = cfg.space.calibration_windows, cfg.evaluate.context
        if cfg.space.importance == "wanda":
            self.space.calibrate(self.text.calibration, windows=windows, length=length)
        if cfg.space.rank and factor_method(cfg.space.rank_method).reads_inputs:  # e.g. whitened SVD
            self.space.calibrate_inputs(self.text.calibration, windows=windows, length=length)
        self.cap = self.space.memory_limit(share_of(cfg.budget.memory))
        smallest = self.space.cost(self._lowest_bits(self.space.uniform_plan(cfg.space.max_ratio))).memory_bytes
        # the floor is raised to the smallest plan the space holds (a smaller target has no plan)
        self.floor = min(self.cap, max(smallest, self.space.memory_limit(share_of(cfg.search.floor))))
        self.seeds = self._seed_plans()  # a budget below the smallest plan fails here, before any write
        self.dense_ppl = self.dense_perplexity()
        self.latency = self._latency_model()
        self.study_id = self._ensure_study()
        self.optuna = self._optuna()
        return self

    def structure_space(self) -> DecoderSpace:
        """The study's space on the model's structure alone (the teacher's, untrained: speed does not read
        weights), at the budget's context: what the latency model is measured on."""
        from evaluators._hf import tiny_model
        from spaces.decoder import DecoderSpace

        if self.cfg.model.spec == "teacher:stdlib":
            model: nn.Module = tiny_model("llama", **self._teacher_config())
        else:
            model = self._model()
        b = self.cfg.budget
        return DecoderSpace(model, context=b.context, batch=b.batch, max_ratio=self.cfg.space.max_ratio)

    def _latency_model(self) -> DecoderLatency | None:
        """With ``evaluate.speed``: the model's latency model at the budget's context, from the store or measured."""
        import torch

        from search.tasks._decoder_speed import decoder_latency

        if not self.cfg.evaluate.speed:
            return None
        return decoder_latency(self.space, self.store, threads=torch.get_num_threads())[0]

    def costs(self, plan: Plan) -> dict[str, float]:
        """The plan's cost columns (:func:`cost_dict`) and, with ``evaluate.speed``, its predicted prefill and
        decode tokens per second."""
        cost = self.space.cost(plan)
        out = cost_dict(cost)
        if self.latency is not None:
            from spaces.decoder import resolve

            choice = resolve(self.model, plan, counts_only=True)
            out["prefill_tps"], out["decode_tps"] = self.latency.tokens_per_second(choice, cost)
        return out

    def _teacher_config(self) -> dict[str, int]:
        t = self.cfg.model.teacher
        return {"num_hidden_layers": t.layers, "hidden_size": t.width, "intermediate_size": t.mlp,
                "num_attention_heads": t.heads, "num_key_value_heads": t.kv_heads}  # fmt: skip

    def _model(self) -> nn.Module:
        from evaluators import build_model
        from spaces.decoder import layout_of

        spec, t = self.cfg.model.spec, self.cfg.model.teacher
        if spec == "teacher:stdlib":
            from evaluators._lm import cached_teacher

            config = self._teacher_config()
            model = cached_teacher(self.cfg.search.artifacts_dir, "llama", self.text.train, steps=t.steps, **config)
        elif spec.startswith(("hf:", "hf-tiny:")):
            model = build_model(spec)
        else:
            raise ValueError(f"model.spec must be teacher:stdlib, hf:PATH or hf-tiny:FAMILY, got {spec!r}")
        if not layout_of(model).causal:
            name = layout_of(model).name
            raise ValueError(f"model {spec!r} is an encoder ({name}): language-model studies search causal "
                             "models by perplexity; encoders are planned and costed, not searched yet")  # fmt: skip
        vocab = int(getattr(model.config, "vocab_size", 0))
        if vocab < 256:
            raise ValueError(f"model {spec!r} has a vocabulary of {vocab}; the byte-level text needs at least 256")
        self._check_positions(model)
        return model

    def _check_positions(self, model: nn.Module) -> None:
        """Windows of ``evaluate.context`` tokens must fit the model's positions, and so must the served
        ``budget.context`` where positions are a learned table (GPT-2's ``n_positions``; rotary ones extend)."""
        config, e, b = model.config, self.cfg.evaluate, self.cfg.budget
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if positions is not None and e.context > int(positions):
            raise ValueError(f"evaluate.context {e.context} exceeds the model's {positions} positions")
        table = getattr(config, "n_positions", None)
        if table is not None and b.context > int(table):
            raise ValueError(f"budget.context {b.context} exceeds the model's {table} learned positions")

    def _seed_plans(self) -> list[tuple[Plan, CandidateKind]]:
        """The uniform and the global plan at the cap, and one at the floor: the global plan where it reaches
        the floor (it keeps a structure of every group), else the uniform one; with bits (or ranks) also every
        layer at the fewest bits (every projection at a quarter of its rank), and then the float plans that
        cannot reach the cap are left out. A cap below the smallest plan is a one-line
        :class:`~spaces.PlanError` here, before the study is written."""
        s, missed = self.space, list[PlanError]()

        def uniform(limit: int) -> tuple[Plan, CandidateKind]:
            return s.fit(s.uniform_plan(0.0), limit), CandidateKind.UNIFORM

        def glob(limit: int) -> tuple[Plan, CandidateKind]:
            return s.global_plan(limit), CandidateKind.GLOBAL

        def first(limit: int, *rules: Callable[[int], tuple[Plan, CandidateKind]]) -> list[tuple[Plan, CandidateKind]]:
            for rule in rules:
                try:
                    return [rule(limit)]
                except PlanError as exc:
                    missed.append(exc)
            return []

        seeds = first(self.cap, uniform) + first(self.cap, glob, uniform) + first(self.floor, glob, uniform)
        if len(seeds) < 3 and not (self.cfg.space.bits or self.cfg.space.rank):  # only they reach below floats
            raise missed[-1]
        if self.cfg.space.bits:  # every layer at the fewest bits, widths fitted around them
            seeds.append((s.fit(self._lowest_bits(Plan()), self.cap), CandidateKind.UNIFORM))
        if self.cfg.space.rank:  # every projection at a quarter of its rank, widths fitted around them
            seeds.append(
                (s.fit(self._low_rank(Plan(), dict.fromkeys(s.groups, 0.25)), self.cap), CandidateKind.UNIFORM)
            )
        unique = {plan.hash: (plan, kind) for plan, kind in seeds}  # a floor at the cap repeats its plans
        return list(unique.values())

    def _low_rank(self, plan: Plan, ranks: dict[str, float]) -> Plan:
        """``plan`` with the groups of ``ranks`` factorized at those shares of full rank (at or above break-even:
        dense), by ``space.rank_method``."""
        if not ranks:
            return plan
        return plan.replace(rank=ranks, method=dict.fromkeys(ranks, self.cfg.space.rank_method))

    def _lowest_bits(self, plan: Plan) -> Plan:
        """``plan`` with every layer at the fewest bits the study searches (``plan`` itself without bits)."""
        if not self.cfg.space.bits:
            return plan
        s = self.space
        path, n = s.layout.layers_path(s.model), len(s.layout.layers(s.model))
        return plan.replace(bits=dict.fromkeys((f"{path}.{i}" for i in range(n)), min(self.cfg.space.bits)))

    def _ensure_study(self) -> int:
        cfg = self.cfg
        return self.store.ensure_study(
            self.name,
            model_spec=cfg.model.spec if cfg.model.spec != "teacher:stdlib" else f"teacher:stdlib {cfg.model.teacher}",
            data_spec=f"{cfg.data.spec} max_bytes={cfg.data.max_bytes}",
            budget={"memory": str(cfg.budget.memory), "context": cfg.budget.context, "batch": cfg.budget.batch},
            space_options={
                "task": "decoder",
                **cfg.space.model_dump(),
                "score": "perplexity",
                "dense": self.dense_ppl,
                "groups": dict(self.space.groups),
            },
            base_cost=self.costs(Plan()),  # with evaluate.speed, the dense model's predicted speed too
        )

    def _optuna(self) -> optuna.Study:
        """The Optuna study that proposes plans, with the sampler registered as ``search.sampler``
        (:func:`search.sampling.make_sampler`, as a vision study builds it)."""
        import optuna

        from search.sampling._samplers import make_sampler

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = self.cfg.search.seed + 7919 * self.store.count(self.study_id)  # a rerun draws afresh
        sampler = make_sampler(self.cfg.search.sampler, seed, self.cfg.search.candidates)
        return optuna.create_study(
            storage=self.store.optuna_storage(),
            study_name=self.name,
            directions=["minimize", "minimize"],
            sampler=sampler,
            load_if_exists=True,
        )

    # ------------------------------------------------------------------ run
    def run(self, on_candidate: Callable[[Outcome], None] | None = None) -> Outcome:
        """Evaluate candidates until the study holds ``search.candidates`` (a stopped run's first)."""
        from spaces import check_interrupt

        out = Outcome(total=self.store.count(self.study_id))
        for row in self.claim_stale():
            self._finish(row.id, Plan.from_json(row.plan), row.trial_number, out)
            check_interrupt()
        while self.store.count(self.study_id) < self.cfg.search.candidates:
            proposal = self._propose()
            if proposal is not None:
                cid, plan, number = proposal
                self._finish(cid, plan, number, out)
                out.total = self.store.count(self.study_id)
                if on_candidate is not None:
                    on_candidate(out)
            check_interrupt()
        out.total = self.store.count(self.study_id)
        out.rescored = self.rescore()
        return out

    def claim_stale(self) -> list[CandidateRow]:
        """The candidates a stopped run left RUNNING (released, or without a heartbeat for 300 s), now this
        worker's: evaluated first."""
        return self.store.claim_stale(self.study_id, self.worker, grace_seconds=300.0, is_dead=lambda w: w is None)

    def _propose(self) -> tuple[int, Plan, int] | None:
        """The next plan, reserved in the store: a seed while seeds remain, else the sampler's."""
        import optuna

        done = self.store.count(self.study_id)
        trial = self.optuna.ask()
        if done < len(self.seeds):
            plan, kind = self.seeds[done]
        else:
            try:
                plan, kind = self._sampled(trial), CandidateKind.SAMPLED
            except PlanError:  # a target the dropped layers cannot reach: not a plan
                self.optuna.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return None
        limit = self.cfg.search.candidates
        cid = self.store.reserve(self.study_id, plan.to_json(), plan.hash, trial.number, worker=self.worker,
                                 limit=limit, kind=kind)  # fmt: skip
        if cid is None:  # the same plan is in the study already
            self.optuna.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None
        return cid, plan, trial.number

    def _sampled(self, trial: optuna.Trial) -> Plan:
        """The sampler's plan: a memory target, a prune ratio per group, dropped layers and per-layer bits;
        fitted onto the target by one shift of the prune ratios."""
        s, cfg = self.space, self.cfg.space
        lo, hi = self.floor / s.dense.memory_bytes, self.cap / s.dense.memory_bytes
        target = trial.suggest_float("memory", lo, hi) if hi > lo else hi
        ratios = {g: trial.suggest_float(g, 0.0, cfg.max_ratio) for g in s.groups}
        path, n = s.layout.layers_path(s.model), len(s.layout.layers(s.model))
        depth: dict[str, str] = {}
        if cfg.depth:
            dropped = [i for i in range(n) if trial.suggest_categorical(f"drop.{i}", [False, True])]
            if len(dropped) > int(cfg.max_depth_share * n):
                raise PlanError(f"{len(dropped)} of {n} layers dropped, more than space.max_depth_share")
            depth = dict.fromkeys((f"{path}.{i}" for i in dropped), "shortcut")
        bits: dict[str, int] = {}
        if cfg.bits:  # 32: the layer stays float
            chosen = {f"{path}.{i}": trial.suggest_categorical(f"bits.{i}", [32, *cfg.bits]) for i in range(n)}
            bits = {name: b for name, b in chosen.items() if b < 32 and name not in depth}  # dropped: no weights
        plan = Plan(prune={g: round(r, 6) for g, r in ratios.items() if r > 0}, depth=depth, bits=bits)
        if cfg.rank:  # a share of full rank per layer and kind; at or above break-even the projections stay dense
            shares = {g: round(trial.suggest_float(f"rank.{g}", 0.05, 1.0), 6) for g in s.groups}
            plan = self._low_rank(plan, {g: r for g, r in shares.items() if g.rsplit(".", 1)[0] not in depth})
        return s.fit(plan, int(target * s.dense.memory_bytes))

    def _finish(self, cid: int, plan: Plan, number: int | None, out: Outcome) -> None:
        """Recover, score and store one candidate; tell the sampler."""

        t0 = time.perf_counter()
        ppl, student, losses = self.evaluate(plan)
        costs = self.costs(plan)
        artifact = self._save(student, f"candidate-{cid}", losses)
        seconds = time.perf_counter() - t0
        rung = [self.cfg.evaluate.recovery_steps, None, math.log(ppl)]  # the first rung: its loss, log perplexity
        self.store.finish(cid, Status.COMPLETE, perplexity=ppl, cost=costs, seconds=seconds,
                          objectives=OBJECTIVES, artifact=str(artifact), rungs=[rung])  # fmt: skip
        if number is not None:
            try:
                self.optuna.tell(number, [ppl, costs["memory"]])
            except (ValueError, RuntimeError):  # the trial was told already (a retried candidate)
                pass
        out.evaluated += 1
        out.seconds.append(seconds)

    def _save(self, student: nn.Module, name: str, losses: list[float]) -> Path:
        """The recovered weights, what `prunetune export` rebuilds the candidate from with its plan, and beside
        them each validation window's mean loss (:func:`storage.save_sample_scores`: what ties are judged by)."""
        import numpy as np
        from safetensors.torch import save_model

        from storage import save_sample_scores

        artifact = self.artifacts / f"{name}.safetensors"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        save_model(student, str(artifact))
        save_sample_scores(artifact, None, np.asarray(losses))
        return artifact

    def rescore(self) -> list[tuple[int, float, float]]:
        """Recover the ``evaluate.rescore_top`` candidates of lowest perplexity again for ``rescore_steps``
        steps, from the plan, and record it as their second rung (once: the store's compare-and-swap); the
        study's pick is made among them. Returns ``(trial, first perplexity, re-scored perplexity)``."""
        e = self.cfg.evaluate
        if e.rescore_top == 0 or e.rescore_steps <= e.recovery_steps:
            return []
        rows = [r for r in self.store.candidates(self.study_id) if r.status is Status.COMPLETE and r.perplexity]
        first = sorted(rows, key=lambda r: (r.perplexity_after(e.recovery_steps) or math.inf, r.id))
        done = []
        for r in first[: e.rescore_top]:
            if r.top_rung >= 1:
                continue
            ppl, student, losses = self.evaluate(Plan.from_json(r.plan), steps=e.rescore_steps)
            artifact = self._save(student, f"candidate-{r.id}-rescored", losses)
            self.store.add_rung(r.id, 1, e.rescore_steps, None, artifact=str(artifact), loss=math.log(ppl),
                                objectives=OBJECTIVES, perplexity=ppl)  # fmt: skip
            done.append((r.trial_number or 0, float(r.perplexity or 0.0), ppl))
        return done

    def evaluate(self, plan: Plan, steps: int | None = None) -> tuple[float, nn.Module, list[float]]:
        """Validation perplexity of ``plan`` after the recovery fine-tune of ``steps`` steps (default
        ``evaluate.recovery_steps``; see the module docs), the recovered model, and each validation window's
        mean loss (the perplexity is ``exp`` of their mean)."""
        from evaluators._lm import recover
        from evaluators._text import from_losses, window_losses

        e = self.cfg.evaluate
        steps = e.recovery_steps if steps is None else steps
        student = self.space.apply(plan)
        if steps:
            teacher = self.model if e.kd_weight > 0 else None
            recover(student, self.text.train, steps=steps, context=e.context, batch_size=e.batch_size,
                    lr=e.lr, teacher=teacher, kd_weight=e.kd_weight, seed=e.seed)  # fmt: skip
        losses = window_losses(student, self.text.validation, context=e.context, max_windows=e.windows)
        return from_losses(losses), student, losses

    def candidate_model(self, row: CandidateRow) -> nn.Module:
        """A stored candidate rebuilt from the base model, its plan and the weights it was scored with."""
        from safetensors.torch import load_model

        from spaces.decoder import apply_decoder_plan, resolve
        from storage import file_sha256

        path = row.artifact
        if path is None or not Path(path).is_file():
            raise ValueError(f"the weights file of trial {row.trial_number} ({path}) is gone from this machine")
        if row.weights_sha256 is not None and file_sha256(path) != row.weights_sha256:
            raise ValueError(f"the weights file of trial {row.trial_number} ({path}) changed after the study wrote it")
        plan = Plan.from_json(row.plan)
        model = apply_decoder_plan(self.model, resolve(self.model, plan, counts_only=True), shapes_only=True)
        load_model(model, path, strict=True)
        return model.eval()

    def front(self) -> list[CandidateRow]:
        """The study's Pareto front, smallest memory first."""
        return front_by_memory(self.store, self.study_id)

    def pick(self) -> CandidateRow | None:
        """The study's pick: :func:`pick` on its front."""
        return pick(self.store.front(self.study_id))

    def dense_perplexity(self) -> float:
        """The dense model's validation perplexity (the front's reference)."""
        from evaluators._text import perplexity

        e = self.cfg.evaluate
        return perplexity(self.model, self.text.validation, context=e.context, max_windows=e.windows)


def cost_dict(cost: Any) -> dict[str, float]:
    """A :class:`~spaces.decoder.DecoderCost` as the store's cost columns."""
    return {
        "memory": float(cost.memory_bytes),
        "bytes": float(cost.weight_bytes),
        "params": float(cost.params),
        "macs": float(cost.prefill_macs_per_token),
        "kv": float(cost.kv_bytes),
    }
