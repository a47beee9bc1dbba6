"""The samplers a study may use: one name each (:class:`Sampler`), built by :func:`make_sampler`."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = ["Sampler", "make_sampler"]


class Sampler(StrEnum):
    """Optuna samplers by name (the config's ``search.sampler``)."""

    TPE = "tpe"
    NSGA2 = "nsga2"
    RANDOM = "random"

    @classmethod
    def parse(cls, name: Sampler | str) -> Sampler:
        """The sampler called ``name``; a one-line ValueError lists the valid names otherwise."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(cls)}") from None


def make_sampler(name: Sampler | str, seed: int, candidates: int) -> BaseSampler:
    """``tpe`` (default), ``nsga2`` or ``random``; a clear error lists them otherwise.

    TPE is the default: with a few dozen candidates it starts modelling after
    ``min(10, candidates // 3)`` random ones, handles several objectives
    (MOTPE) and, with ``constant_liar``, does not hand parallel workers the same
    region. NSGA-II needs several generations of ``population_size`` (here
    ``max(4, candidates // 4)``) before it improves on random search.
    """
    import optuna

    kind = Sampler.parse(name)

    if kind is Sampler.TPE:
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(2, min(10, candidates // 3)), multivariate=True, constant_liar=True
        )
    if kind is Sampler.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, candidates // 4))
    return optuna.samplers.RandomSampler(seed=seed)
