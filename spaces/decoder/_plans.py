"""A decoder's compression space under a memory budget: the one-rule plans the libraries make, and ``fit``.

``DecoderSpace(model, context=T, batch=B)`` holds a model, the context and
batch its KV cache is counted at, and importance scores per structure (the
weights' L2 norm until :meth:`DecoderSpace.calibrate` reads activations). A
**memory budget** is weights plus KV cache at ``T`` and ``B``
(:attr:`DecoderCost.memory_bytes`); ``"50%"`` is half the dense model's.

The plans each library's one rule gives, every one exact and within the budget:

* :meth:`~DecoderSpace.uniform_plan` — one ratio for every layer's MLP and
  key-value groups (LLM-Pruner's setting); :meth:`~DecoderSpace.fit` finds the
  ratio;
* :meth:`~DecoderSpace.global_plan` — structures ranked across all layers by
  importance per byte they cost, the least important removed first until the
  budget holds (FLAP's and Wanda-sp's global allocation; scores standardized
  per kind, MLP channels and key-value groups, across the model, as FLAP does);
* :meth:`~DecoderSpace.depth_plan` — whole layers dropped, the least influential
  first (ShortGPT's block influence ``1 - cos(input, output)`` on calibration
  text), until the budget holds (Minitron's depth axis).

:meth:`~DecoderSpace.fit` moves any plan onto the budget by one shift of all its
prune ratios (clipped to ``[0, max_ratio]``), found by bisection: the largest
model within the budget; the dropped layers stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spaces._errors import PlanError
from spaces._plan import Plan
from spaces.decoder._choice import apply_decoder_plan, decoder_groups, magnitude
from spaces.decoder._footprint import DecoderCost, decoder_cost
from spaces.decoder._layout import layout_of

__all__ = ["DecoderSpace"]


class DecoderSpace:
    """A decoder-only model's plans, costs and one-rule baselines under a memory budget (see the module docs)."""

    def __init__(self, model: nn.Module, *, context: int, batch: int = 1, max_ratio: float = 0.95) -> None:
        if context < 1 or batch < 1:
            raise ValueError(f"context and batch must be at least 1, got context={context}, batch={batch}")
        self.model, self.layout = model.eval(), layout_of(model)
        self.context, self.batch, self.max_ratio = context, batch, max_ratio
        self.groups = decoder_groups(model, self.layout)
        self.scores: dict[str, torch.Tensor] | None = None
        self.grams: dict[str, torch.Tensor] | None = None  # each projection's input Gram matrix (calibrate_inputs)
        self.dense = self.cost(Plan())

    # ------------------------------------------------------------ costs and models
    def cost(self, plan: Plan) -> DecoderCost:
        return decoder_cost(self.model, plan, context=self.context, batch=self.batch)

    def apply(self, plan: Plan) -> nn.Module:
        return apply_decoder_plan(self.model, plan, scores=self.scores, grams=self.grams)

    def memory_limit(self, memory: float | str | int) -> int:
        """Bytes of a memory budget: ``"50%"`` or ``0.5`` of the dense model's, or an ``int`` of bytes."""
        if isinstance(memory, str) and memory.endswith("%"):
            memory = float(memory[:-1]) / 100
        if isinstance(memory, float) and 0 < memory <= 1:
            return int(memory * self.dense.memory_bytes)
        if isinstance(memory, int) and not isinstance(memory, bool) and memory > 0:
            return memory
        raise ValueError(f"memory budget must be a share in (0, 1], a percentage or bytes > 0, got {memory!r}")

    # ------------------------------------------------------------ plans
    def uniform_plan(self, ratio: float) -> Plan:
        return Plan(prune=dict.fromkeys(self.groups, ratio))

    def fit(self, plan: Plan, limit: int) -> Plan:
        """``plan`` with every prune ratio shifted by one amount: the largest model whose memory fits ``limit``."""
        base = {g: float(plan.entries("prune").get(g, 0.0)) for g in self.groups}

        def shifted(s: float) -> Plan:
            ratios = {g: min(self.max_ratio, max(0.0, r + s)) for g, r in base.items()}
            return plan.replace(prune={g: round(r, 6) for g, r in ratios.items() if r > 0})

        if self.cost(shifted(1.0)).memory_bytes > limit:
            smallest = self.cost(shifted(1.0)).memory_bytes
            raise PlanError(
                f"memory budget {limit} bytes is below the smallest plan ({smallest} bytes at prune ratio "
                f"{self.max_ratio} everywhere, {100 * smallest / self.dense.memory_bytes:.1f}% of the dense model)"
            )
        lo, hi = -1.0, 1.0  # shifted(hi) fits; find the smallest shift that does
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.cost(shifted(mid)).memory_bytes <= limit else (mid, hi)
        return shifted(hi)

    def global_plan(self, limit: int) -> Plan:
        """Structures removed across all layers by standardized importance per byte until ``limit`` holds."""
        per_byte = self._bytes_per_structure()
        ranked: list[tuple[float, str, int]] = []
        for kind in ("mlp", "attn"):
            gids = [g for g in self.groups if g.endswith("." + kind)]
            scores = torch.cat([self._scores(g) / per_byte[g] for g in gids])
            mean, std = scores.mean(), scores.std().clamp_min(1e-12)
            for g in gids:
                z = (self._scores(g) / per_byte[g] - mean) / std
                ranked += [(float(v), g, j) for j, v in enumerate(z)]
        ranked.sort()
        removed = dict.fromkeys(self.groups, 0)
        memory = self.dense.memory_bytes  # each structure's bytes are exact: costs are linear in the counts
        for _, g, _j in ranked:
            if memory <= limit:
                break
            if removed[g] < self.groups[g] - 1:  # every group keeps one
                removed[g] += 1
                memory -= per_byte[g]
        return self._check(Plan(prune={g: r / self.groups[g] for g, r in removed.items() if r}), limit)

    def depth_plan(self, limit: int, tokens: torch.Tensor, *, windows: int = 8) -> Plan:
        """Whole layers dropped, the least influential on ``tokens`` first, until ``limit`` holds."""
        influence = self.block_influence(tokens, windows=windows)
        path = self.layout.layers_path(self.model)
        order = sorted(range(len(influence)), key=lambda i: influence[i])
        for n in range(len(order)):  # drop the n least influential; at least one layer stays
            plan = Plan(depth=dict.fromkeys((f"{path}.{i}" for i in order[:n]), "shortcut"))
            if self.cost(plan).memory_bytes <= limit:
                return plan
        return self._check(plan, limit)

    def _check(self, plan: Plan, limit: int) -> Plan:
        if self.cost(plan).memory_bytes > limit:
            raise PlanError(
                f"memory budget {limit} bytes is below what this rule reaches ({self.cost(plan).memory_bytes})"
            )
        return plan

    def _scores(self, gid: str) -> torch.Tensor:
        if self.scores is not None and gid in self.scores:
            return self.scores[gid].float()
        i, kind = int(gid.rsplit(".", 2)[1]), gid.rsplit(".", 1)[1]
        return magnitude(self.layout, self.layout.layers(self.model)[i], kind).float()

    def _bytes_per_structure(self) -> dict[str, int]:
        """Memory one structure of each group costs: its weights (and KV cache for a key-value group)."""
        out = {}
        for g, n in self.groups.items():
            one_less = self.cost(Plan(prune={g: 1 / n})).memory_bytes if n > 1 else self.dense.memory_bytes
            out[g] = max(1, self.dense.memory_bytes - one_less)
        return out

    # ------------------------------------------------------------ calibration
    @torch.no_grad()
    def block_influence(self, tokens: torch.Tensor, *, windows: int = 8) -> list[float]:
        """Per layer, ``1 - cos(input, output)`` of its hidden states, averaged over the tokens (ShortGPT)."""
        layers = self.layout.layers(self.model)
        seen: list[list[torch.Tensor]] = [[] for _ in layers]
        hooks = [
            layer.register_forward_hook(_influence_hook(seen[i]), with_kwargs=True) for i, layer in enumerate(layers)
        ]
        self._read(tokens, windows, hooks)
        return [float(torch.cat(values).mean()) for values in seen]

    def _read(self, tokens: torch.Tensor, windows: int, hooks: list[Any], length: int | None = None) -> None:
        """Run the model over the first ``windows`` windows of ``tokens`` (of ``length`` tokens, default the
        space's context) with ``hooks`` on, then remove them."""
        try:
            for batch in _batches(tokens, length or self.context, windows):
                self.model(input_ids=batch, use_cache=False)
        finally:
            for h in hooks:
                h.remove()

    @torch.no_grad()
    def calibrate(
        self, tokens: torch.Tensor, *, windows: int = 8, length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Activation-aware scores (Wanda-sp): per structure, ``sum |W| * ||X||`` over its output columns, read on
        ``windows`` windows of ``length`` tokens (default: the space's context, which a model with fewer
        positions than the served context cannot read)."""
        norms: dict[int, list[torch.Tensor]] = {}
        layers = self.layout.layers(self.model)
        hooks = []
        for i, layer in enumerate(layers):
            for k, module in enumerate(self.layout.output_modules(layer)):
                norms[2 * i + k] = []
                hooks.append(module.register_forward_pre_hook(_norm_hook(norms[2 * i + k])))
        self._read(tokens, windows, hooks, length)
        path, scores = self.layout.layers_path(self.model), {}
        for i, layer in enumerate(layers):
            a, m = self.layout.attention(layer), self.layout.mlp(layer)
            x_attn, x_mlp = (torch.stack(norms[2 * i + k]).pow(2).sum(0).sqrt() for k in (0, 1))
            scores[f"{path}.{i}.attn"] = (a.o.abs() * x_attn).sum(0).view(a.n_kv, -1).sum(1)
            scores[f"{path}.{i}.mlp"] = (m.down.abs() * x_mlp).sum(0)
        self.scores = scores
        return scores

    @torch.no_grad()
    def calibrate_inputs(
        self, tokens: torch.Tensor, *, windows: int = 8, length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The Gram matrix ``X^T X`` (float64) of every factorizable projection's input over ``windows`` windows
        of ``length`` tokens, by the projection's full name: what the ``whitened`` method reads
        (:mod:`spaces.factorization._whitened`). A projection sharing its input with the one before it (key
        and value with query, up with gate) shares its matrix. Per layer: two ``hidden x hidden`` matrices, one
        of the attention's query width and one of the MLP's width (the largest), in float64, which a large
        model may not hold in memory."""
        layers, path = self.layout.layers(self.model), self.layout.layers_path(self.model)
        grams: dict[str, torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(layers):
            for kind in ("attn", "mlp"):
                names = self.layout.projection_names(kind)  # the first and the last read their own input
                for name in (names[0], names[-1]) if names else ():
                    module: Any = layer.get_submodule(name)
                    n = int(module.in_features)
                    grams[f"{path}.{i}.{name}"] = torch.zeros(n, n, dtype=torch.float64)
                    hooks.append(module.register_forward_pre_hook(_gram_hook(grams[f"{path}.{i}.{name}"])))
                for shared in names[1:-1]:  # key and value read the query's input, up reads the gate's
                    grams[f"{path}.{i}.{shared}"] = grams[f"{path}.{i}.{names[0]}"]
        self._read(tokens, windows, hooks, length)
        self.grams = grams
        return grams


def _gram_hook(into: torch.Tensor) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().flatten(0, -2).double()
        into.add_(x.T @ x)

    return hook


def _batches(tokens: torch.Tensor, context: int, windows: int) -> list[torch.Tensor]:
    """The first ``windows`` windows of ``context`` tokens, in batches of up to 8."""
    n = min(windows, tokens.numel() // context)
    if n < 1:
        raise ValueError(f"{tokens.numel()} calibration tokens make no window of {context}")
    rows = tokens[: n * context].view(n, context)
    return list(rows.split(8))


def _influence_hook(into: list[torch.Tensor]) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        y = out[0] if isinstance(out, tuple) else out
        into.append(1 - F.cosine_similarity(x.flatten(0, 1).float(), y.flatten(0, 1).float(), dim=-1))

    return hook


def _norm_hook(into: list[torch.Tensor]) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        into.append(args[0].detach().flatten(0, -2).float().pow(2).sum(0).sqrt())

    return hook
