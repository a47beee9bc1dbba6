"""Low-rank factorization as a plan dimension: ``rank = {layer: rank}``, ``method = {layer: method}``.

Ranks are resolved on each layer's pruned shape under the break-even rule
(:meth:`spaces.LayerGeom.factor_ranks`: a rank at or above break-even keeps the
layer dense); the cost replaces a factorized layer's dense term by its factor
chain's; the surgery replaces the layer by the chain
(:func:`spaces.factorize_layer`). ``fit`` holds the ranks. The sampler's
parameter per layer is a fraction of its break-even rank on the grid 0.1, ...,
1.0, where 1.0 means dense; with ``options["methods"]`` (two or more methods),
a second parameter per layer, ``<layer>@method``, picks the layer's method among
those of them that apply to it (an index on the grid 0, 1, ...), and the
fraction is of that method's break-even rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spaces._errors import InputTypeError, PlanError
from spaces._vocab import Method
from spaces.dimensions._base import AllocPoint, Block, CostState, Dimension, Entries, ParamSpec, StructureRow
from spaces.dimensions._roles import Allocated, Reported, Sampled
from spaces.factorization import factor_method, method_names

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spaces._plan import Plan
    from spaces._space import ModelSpace
    from spaces.cost._costmodel import CostModel, Ranks
    from spaces.graph._surgery import Surgery

__all__ = ["RankDimension", "RankOptions"]

DEFAULT_METHOD = Method.SVD.value
_RANK_STEP = 0.1  # the sampler's grid of fractions of the break-even rank
_METHOD_PARAM = "@method"  # suffix of a layer's method parameter (options["methods"])


def _check_rank(layer: str, rank: Any) -> int | float:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise InputTypeError(f"rank of layer {layer!r} must be an int or a fraction in (0, 1], got {rank!r}")
    if isinstance(rank, int):
        if rank < 1:
            raise PlanError(f"rank of layer {layer!r} must be >= 1, got {rank}")
        return rank
    if not 0.0 < rank <= 1.0:
        raise PlanError(f"rank fraction of layer {layer!r} must be in (0, 1], got {rank!r}")
    return float(rank)


def method_of(plan: Plan, layer: str) -> str:
    """The factorization method ``plan`` gives ``layer`` (``"svd"`` unless it says otherwise)."""
    return str(plan.entries("method").get(layer, DEFAULT_METHOD))


def rank_layers(space: ModelSpace, method: str) -> dict[str, int]:
    """Factorizable layers (for ``method``) with a break-even rank of at least 2, and that rank."""
    out = {}
    for g in space.layers:
        if method in g.methods:
            mur = g.max_useful_rank(method)
            if mur >= 2:
                out[g.name] = mur
    return out


def layer_methods(space: ModelSpace, options: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Per layer the sampler can factorize, the methods it may choose from (``options["methods"]``, else
    ``options["method"]``) that apply to it with a break-even rank of at least 2."""
    listed = [str(m) for m in options.get("methods") or []]
    methods = listed if len(listed) > 1 else [str(options.get("method", DEFAULT_METHOD))]
    out: dict[str, tuple[str, ...]] = {}
    for method in methods:
        for name in rank_layers(space, method):
            out[name] = (*out.get(name, ()), method)
    return out


def factorized_at(costs: CostModel, keep: np.ndarray, chosen: Mapping[str, tuple[str, int]]) -> Ranks:
    """``chosen`` ({layer: (method, int rank)}) as a plan applies it at ``keep``: ``{layer: (method, ranks)}``.

    A rank at or above the layer's break-even rank on its pruned shape leaves
    the layer dense (absent).
    """
    out = {}
    for name, (method, r) in chosen.items():
        ranks = costs.pruned_geom(name, keep).factor_ranks(method, r)
        if ranks is not None:
            out[name] = (method, ranks)
    return out


class RankOptions(BaseModel):
    """Per-layer factorization (low-rank methods, versatile filters) searched beside the pruning."""

    model_config = ConfigDict(extra="forbid")
    method: Method = Field(
        Method.SVD,
        description="how a layer is factorized: svd, tucker2, tt (low rank) or versatile, versatile_ch (versatile "
        "filters); the allocator's seed plans use this one",
    )
    methods: list[Method] = Field(
        default_factory=list,
        description="with two or more, the sampler also chooses each layer's method among these (every method on)",
    )

    # the flat [space] keys of older configs this table reads (see search._config): key -> where it went
    flat_keys: ClassVar[dict[str, str]] = {
        "rank": "(present: ranks searched)",
        "method": "method",
        "methods": "methods",
    }

    @classmethod
    def from_flat(cls, flat: dict[str, Any], *, present: bool) -> dict[str, Any] | None:
        """The table the flat keys ask for: ``rank = true`` turns it on; method and methods are checked either way."""
        from pydantic import TypeAdapter

        on = TypeAdapter(bool).validate_python(flat.pop("rank")) if "rank" in flat else present
        cls.model_validate(flat)  # a bad method is an error even where ranks are off
        return flat if on else None

    @model_validator(mode="after")
    def _methods(self) -> RankOptions:
        listed = self.methods
        if listed and (len(listed) < 2 or len(set(listed)) != len(listed)):
            got = [m.value for m in listed]
            raise ValueError(f"methods must list two or more different methods (one: use method), got {got}")
        if listed and self.method not in listed:
            raise ValueError(f"method {self.method.value!r} must be one of methods (the allocator's seeds use it)")
        return self


class RankDimension(Dimension, Sampled, Allocated, Reported):
    key = "rank"
    extra_keys = ("method",)
    describe: ClassVar[dict[str, str]] = {"rank": "layer to rank", "method": "layer to method"}
    order = 10
    factor_chains = True
    options = RankOptions

    def normalize(self, values: Entries) -> Entries:
        methods = method_names()
        rank = {str(k): _check_rank(k, v) for k, v in values["rank"].items()}
        for layer, m in values["method"].items():
            if m not in methods:
                raise PlanError(f"method of layer {layer!r} must be one of {', '.join(methods)}, got {m!r}")
            if layer not in rank:
                raise PlanError(f"layer {layer!r} has a method but no rank")
        return {"rank": rank, "method": {k: v for k, v in values["method"].items() if v != DEFAULT_METHOD}}

    def resolve(self, costs: CostModel, plan: Plan, keep: np.ndarray) -> Any | None:
        """Per factorized layer: ``(method, ranks)`` on its pruned shape; layers kept dense are absent.

        The break-even rule (:meth:`spaces.LayerGeom.factor_ranks`): a layer whose
        rank is at or above its (pruned) break-even rank stays dense.
        """
        out = {}
        for name, spec in plan.rank.items():
            method = method_of(plan, name)
            costs.check_layer(name, method, spec)
            ranks = costs.pruned_geom(name, keep).factor_ranks(method, spec)
            if ranks is not None:
                out[name] = (method, ranks)
        return out or None

    def add_cost(self, costs: CostModel, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        for name, (method, ranks) in resolved.items():
            geom = costs.pruned_geom(name, keep)
            dense_macs, dense_params = geom.dense_cost()
            macs, params = geom.factor_cost(method, ranks)
            state.macs += macs - dense_macs
            state.params += params - dense_params
            state.bytes += (params - dense_params) * costs.element_size(name)
            state.weights[name] = params

    def apply(self, surgery: Surgery, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        from spaces._lowrank import factorize_layer  # torch

        for name, (method, ranks) in resolved.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attr, factorize_layer(getattr(parent, attr), method, ranks))

    def verify_probe(self, costs: CostModel) -> Entries:
        """Every registered method at rank 1, each on the first layer not yet probed that it can factorize."""
        rank: dict[str, int] = {}
        method: dict[str, str] = {}
        for m in method_names():
            for geom in costs.trace.geoms.values():
                if geom.name not in rank and m in geom.methods and geom.max_useful_rank(m) >= 2:
                    rank[geom.name], method[geom.name] = 1, m
                    break
        return {"rank": rank, "method": method} if rank else {}

    # ------------------------------------------------------------ the sampler
    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """With ``options["rank"]``: per layer, a fraction of its break-even rank (1.0: dense)."""
        if not options.get("rank"):
            return {}
        out = {}
        for name, methods in layer_methods(space, options).items():
            out[name] = ParamSpec(_RANK_STEP, 1.0, step=_RANK_STEP)
            if len(methods) > 1:
                out[name + _METHOD_PARAM] = ParamSpec(0.0, float(len(methods) - 1), step=1.0)
        return out

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        choices = layer_methods(space, options) if values else {}
        ranks, methods = {}, {}
        for name, value in values.items():
            if name.endswith(_METHOD_PARAM) or value >= 1.0 - 1e-9:  # 1: dense (break-even or more)
                continue
            method = choices[name][round(float(values.get(name + _METHOD_PARAM, 0.0)))]
            mur = space.layer(name).max_useful_rank(method)
            ranks[name], methods[name] = min(mur - 1, max(1, round(float(value) * mur))), method
        return {"rank": ranks, "method": methods}

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        choices = layer_methods(space, options)
        out: dict[str, float] = {}
        for name in specs:
            if name.endswith(_METHOD_PARAM):
                continue
            spec, method = plan.rank.get(name), method_of(plan, name)
            if len(choices[name]) > 1:
                out[name + _METHOD_PARAM] = float(choices[name].index(method) if method in choices[name] else 0)
            if spec is None or method not in choices[name]:
                out[name] = 1.0
                continue
            full = max(space.layer(name).full_ranks(method))
            r = spec if isinstance(spec, int) else max(1, round(spec * full))
            frac = round(min(1.0, r / space.layer(name).max_useful_rank(method)) / _RANK_STEP) * _RANK_STEP
            out[name] = min(1.0 - _RANK_STEP, max(_RANK_STEP, round(frac, 10)))  # factorized: below 1.0 (dense)
        return out

    # ------------------------------------------------------------ the allocator
    def allocator_blocks(self, space: ModelSpace, point: AllocPoint) -> list[Block]:
        """With ``options["rank"]``: per layer, dense (the alternative) or factorized at one of up to 16 ranks.

        Ranks go up to one below the layer's break-even rank at the point's
        pruned shape; a rank block's value is its share of the layer's squared
        singular values (or the method's own kept share: versatile filters), its cost the exact change of the
        factor chain's cost.
        """
        if not point.options.get("rank"):
            return []
        method = str(point.options.get("method", DEFAULT_METHOD))
        current = point.resolved.get("rank") or {}
        return [
            self._block(space, point, geom.name, method, current) for geom in space.layers if method in geom.methods
        ]

    def _block(self, space: ModelSpace, point: AllocPoint, name: str, method: str, current: dict) -> Block:
        import numpy as np

        from spaces.policy._allocate import chain_levels

        geom = space.costs.pruned_geom(name, point.keep)
        byte = space.costs.element_size(name)

        def vec(macs_params: tuple[int, int]) -> np.ndarray:
            m, p = macs_params
            return np.array([{"macs": m, "params": p, "bytes": p * byte}[k] for k in point.metrics], dtype=np.float64)

        dense = vec(geom.dense_cost())
        now = vec(geom.factor_cost(*current[name])) if name in current else dense
        r_max = geom.max_useful_rank(method) - 1  # at break-even the layer stays dense
        if r_max < 1:
            return Block(unit=name, base_cost=-now, alternative=(1.0, dense), forced=True)
        ranks = chain_levels(np.arange(1, r_max + 1), 16)
        kept = space.kept_energy(name, method, ranks, geom)
        chain = [vec(geom.factor_cost(method, geom.resolve(method, int(r)))) for r in ranks]
        point.cache.setdefault("rank", {})[name] = ranks
        return Block(
            unit=name,
            values=[float(e) for e in np.diff(kept, prepend=0.0)],
            costs=[c - p for c, p in zip(chain, [np.zeros_like(dense), *chain[:-1]], strict=True)],
            base_cost=-now,
            alternative=(1.0, dense),
        )

    def allocator_decode(self, space: ModelSpace, point: AllocPoint, choices: list[tuple[bool, int]]) -> None:
        """Factorize at the chosen rank; a rank the new pruning puts at or above break-even leaves it dense."""
        if not choices:
            return
        method = str(point.options.get("method", DEFAULT_METHOD))
        names = [g.name for g in space.layers if method in g.methods]
        levels = point.cache.get("rank", {})
        chosen = {
            name: (method, int(levels[name][max(steps, 1) - 1]))
            for name, (dense, steps) in zip(names, choices, strict=True)
            if not dense and name in levels
        }
        out = factorized_at(space.costs, point.keep, chosen)
        specs = {name: chosen[name][1] for name in out}
        if out:
            point.resolved["rank"] = out
        point.cache["rank_specs"] = specs  # the int ranks of the last decoded point (the final one at the end)

    def allocator_entries(self, space: ModelSpace, point: AllocPoint) -> Entries:
        specs = point.cache.get("rank_specs", {}) if point.resolved.get("rank") else {}
        method = str(point.options.get("method", DEFAULT_METHOD))
        return {"rank": dict(specs), "method": dict.fromkeys(specs, method)}

    # ------------------------------------------------------------ the report
    def summary(self, plan: Plan, limit: int) -> str | None:
        if not plan.rank:
            return None
        method = plan.method
        shown = ", ".join(
            f"{k} r{v}{'/' + method[k] if k in method else ''}" for k, v in list(plan.rank.items())[:limit]
        )
        return f"{len(plan.rank)} layers factorized ({shown}{', …' if len(plan.rank) > limit else ''})"

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        ranks = space.resolved_ranks(plan)
        rows = []
        for geom in space.layers:
            method, kept = ranks.get(geom.name, (DEFAULT_METHOD, geom.full_ranks(DEFAULT_METHOD)))
            fm = factor_method(method)
            rows.append(StructureRow(fm.kept_label, geom.name, *(int(v) for v in fm.kept_units(geom, kept))))
        return rows
