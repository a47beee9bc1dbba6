"""What can change in a model and what it costs.

``ModelSpace`` traces a model once and exposes its prunable channel groups,
``Plan`` says what to change, ``cost``/``measure_cost`` say what it costs and
``Budget``/``fit`` keep plans within limits.
"""

from spaces._allocate import Allocation, AllocatorFallbackWarning, allocate
from spaces._budget import Budget
from spaces._cost import COUNTED_OPS, Cost, measure_cost
from spaces._errors import InfeasibleBudgetError, PlanError, PruneTuneError, UnsupportedModelError
from spaces._lowrank import LayerGeom, factorize_layer
from spaces._plan import IMPORTANCES, METHODS, Plan
from spaces._policy import fit, uniform_plan
from spaces._space import Group, ModelSpace

__all__ = [
    "COUNTED_OPS",
    "IMPORTANCES",
    "METHODS",
    "Allocation",
    "AllocatorFallbackWarning",
    "Budget",
    "Cost",
    "Group",
    "InfeasibleBudgetError",
    "LayerGeom",
    "ModelSpace",
    "Plan",
    "PlanError",
    "PruneTuneError",
    "UnsupportedModelError",
    "allocate",
    "factorize_layer",
    "fit",
    "measure_cost",
    "uniform_plan",
]
