"""Search: Optuna ask/tell studies over compression plans, the run configuration and the ``prunetune`` CLI.

Heavy dependencies (torch, optuna) are imported when used, not on ``import search``.
"""

from search._config import Config, load_config
from search._early_stop import EarlyStop
from search._export import export_candidate, load_exported
from search._study import RunResult, Search, Timings, make_sampler

__all__ = [
    "Config",
    "EarlyStop",
    "RunResult",
    "Search",
    "Timings",
    "export_candidate",
    "load_config",
    "load_exported",
    "make_sampler",
]
