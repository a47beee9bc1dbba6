"""The samplers a study may use: a registry of named factories (entry-point group ``prunetune.samplers``).

``search.sampler`` names one; :func:`make_sampler` builds its Optuna sampler for
a study (its seed and its number of candidates). A plug-in sampler is one
:class:`SamplerFactory` subclass and one :func:`register_sampler` line (or an
entry point). The built-ins:

* ``tpe`` (default): with a few dozen candidates it starts modelling after
  ``min(10, candidates // 3)`` random ones, handles several objectives (MOTPE)
  and, with ``constant_liar``, does not hand parallel workers the same region;
* ``nsga2``: needs several generations of ``population_size`` (here
  ``max(4, candidates // 4)``) before it improves on random search;
* ``gp``: Optuna's ``GPSampler`` (Gaussian-process Bayesian optimization, several
  objectives), after the same start-up as TPE;
* ``evolve``: the evolutionary level search of :mod:`search.sampling._evolve`
  (EvoPress-style: mutate the per-group levels of the best plans);
* ``random``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from spaces import Registry

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = [
    "SAMPLERS",
    "Sampler",
    "SamplerFactory",
    "check_sampler_name",
    "make_sampler",
    "register_sampler",
    "sampler_names",
]


class Sampler(StrEnum):
    """The built-in samplers' names (a plug-in adds its own to :data:`SAMPLERS`)."""

    TPE = "tpe"
    NSGA2 = "nsga2"
    GP = "gp"
    EVOLVE = "evolve"
    RANDOM = "random"

    @classmethod
    def parse(cls, name: Sampler | str) -> Sampler | str:
        """The registered sampler called ``name`` (a built-in as this enum, a plug-in's as its name); a one-line
        ValueError lists the names otherwise."""
        text = str(name)
        if text not in SAMPLERS:
            raise ValueError(f"unknown sampler {text!r}; choose one of {', '.join(SAMPLERS.names())}")
        return cls(text) if text in cls._value2member_map_ else text


class SamplerFactory(ABC):
    """Builds one kind of Optuna sampler for a study."""

    name: ClassVar[str]  # its name in the registry and in ``search.sampler``

    @abstractmethod
    def build(self, seed: int, candidates: int) -> BaseSampler:
        """The sampler for a study of ``candidates`` candidates, seeded with ``seed``."""


def _startup(candidates: int) -> int:
    return max(2, min(10, candidates // 3))


class Tpe(SamplerFactory):
    name = "tpe"

    def build(self, seed: int, candidates: int) -> BaseSampler:
        import optuna

        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=_startup(candidates), multivariate=True, constant_liar=True
        )


class Nsga2(SamplerFactory):
    name = "nsga2"

    def build(self, seed: int, candidates: int) -> BaseSampler:
        import optuna

        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, candidates // 4))


class Gp(SamplerFactory):
    name = "gp"

    def build(self, seed: int, candidates: int) -> BaseSampler:
        import optuna

        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup(candidates))


class Evolve(SamplerFactory):
    name = "evolve"

    def build(self, seed: int, candidates: int) -> BaseSampler:
        from search.sampling._evolve import EvolutionarySampler

        return EvolutionarySampler(seed=seed, population=max(4, min(8, candidates // 4)))


class Random(SamplerFactory):
    name = "random"

    def build(self, seed: int, candidates: int) -> BaseSampler:
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: Registry[SamplerFactory] = Registry(
    "sampler",
    SamplerFactory,
    group="prunetune.samplers",
    builtins={
        "tpe": "search.sampling._samplers:Tpe",
        "nsga2": "search.sampling._samplers:Nsga2",
        "gp": "search.sampling._samplers:Gp",
        "evolve": "search.sampling._samplers:Evolve",
        "random": "search.sampling._samplers:Random",
    },
    name_attr="name",
    error=ValueError,
)


def register_sampler(s: SamplerFactory | type[SamplerFactory], *, replace: bool = False) -> SamplerFactory:
    """Add a sampler under its ``name`` (``replace=True`` replaces one of that name)."""
    return SAMPLERS.register(s, replace=replace)


def sampler_names() -> tuple[str, ...]:
    return SAMPLERS.names()


def check_sampler_name(name: str) -> str:
    """``name`` when a sampler is registered under it; else a ValueError naming the registered ones (what a
    config's ``search.sampler`` validator raises, read as one line)."""
    if name not in sampler_names():
        raise ValueError("Input should be " + " or ".join(repr(n) for n in sampler_names()))
    return name


def make_sampler(name: str, seed: int, candidates: int) -> BaseSampler:
    """The sampler registered as ``name``, built for a study; a one-line error lists the names otherwise."""
    return SAMPLERS.get(str(name)).build(seed, candidates)
