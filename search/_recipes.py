"""The registry of training recipes (a :class:`~spaces.Registry`, entry-point group ``prunetune.recipes``).

A *recipe* is what a compressed model gets between its BN recalibration and
its fine-tune, for candidates and for ``finalize`` alike: nothing
(``"finetune"``), or each changed block taught to reproduce the original
block's output (``"blockwise"``, tensor-train's sequential training,
:class:`evaluators.BlockwiseTraining`). It returns the
:class:`evaluators.Evaluator` steps to run and says whether they read the
dense model. ``evaluate.recipe`` names one; a new one is a :class:`TrainingRecipe`
subclass and one :func:`register_recipe` line (or an entry point). The module
is torch-free: a recipe imports its evaluators when it is run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from spaces import Registry

if TYPE_CHECKING:
    from evaluators import Evaluator

__all__ = ["RECIPES", "TrainingRecipe", "recipe", "recipe_names", "register_recipe"]


class TrainingRecipe(ABC):
    """What a compressed model is trained with after its BN recalibration and before its fine-tune."""

    name: ClassVar[str]  # its name in the registry and in ``evaluate.recipe``
    needs_teacher: ClassVar[bool] = False  # its steps read the dense model (the context's teacher)

    @abstractmethod
    def steps(self, evaluate: Any) -> list[Evaluator]:
        """The evaluator steps, read from the config's ``[evaluate]`` (``evaluate``)."""


class FineTuneOnly(TrainingRecipe):
    name = "finetune"

    def steps(self, evaluate: Any) -> list[Evaluator]:
        return []


class Blockwise(TrainingRecipe):
    name = "blockwise"
    needs_teacher = True

    def steps(self, evaluate: Any) -> list[Evaluator]:
        from evaluators import BlockwiseTraining

        return [BlockwiseTraining(steps=evaluate.blockwise_steps)]


RECIPES: Registry[TrainingRecipe] = Registry(
    "training recipe",
    TrainingRecipe,
    group="prunetune.recipes",
    builtins={"finetune": "search._recipes:FineTuneOnly", "blockwise": "search._recipes:Blockwise"},
    name_attr="name",
    error=ValueError,
    what="recipe",
)


def register_recipe(r: TrainingRecipe | type[TrainingRecipe], *, replace: bool = False) -> TrainingRecipe:
    """Add a recipe under its ``name`` (``replace=True`` replaces one of that name)."""
    return RECIPES.register(r, replace=replace)


def recipe_names() -> tuple[str, ...]:
    return RECIPES.names()


def recipe(name: str) -> TrainingRecipe:
    return RECIPES.get(name)
