"""Search: Optuna ask/tell studies over compression plans, the run configuration and the ``prunetune`` CLI.

Imports are lazy (PEP 562): ``import search`` loads none of torch, optuna,
SQLAlchemy or pydantic; each name's module is imported when the name is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces import lazy_exports

if TYPE_CHECKING:
    from search._candidate import CandidateRunner, Outcome, Timings, worker_id
    from search._config import Config, load_config
    from search._export import export_candidate, load_exported
    from search._finalize import Finalized, finalize
    from search._prepare import Prepared, prepare
    from search._rungs import promotes, promotion_order
    from search._samplers import Sampler, make_sampler
    from search._study import RunResult, Search

__all__ = [
    "CandidateRunner",
    "Config",
    "Finalized",
    "Outcome",
    "Prepared",
    "RunResult",
    "Sampler",
    "Search",
    "Timings",
    "export_candidate",
    "finalize",
    "load_config",
    "load_exported",
    "make_sampler",
    "prepare",
    "promotes",
    "promotion_order",
    "worker_id",
]

_WHERE = {
    "CandidateRunner": "_candidate",
    "Config": "_config",
    "Finalized": "_finalize",
    "Outcome": "_candidate",
    "Prepared": "_prepare",
    "RunResult": "_study",
    "Sampler": "_samplers",
    "Search": "_study",
    "Timings": "_candidate",
    "export_candidate": "_export",
    "finalize": "_finalize",
    "load_config": "_config",
    "load_exported": "_export",
    "make_sampler": "_samplers",
    "prepare": "_prepare",
    "promotes": "_rungs",
    "promotion_order": "_rungs",
    "worker_id": "_candidate",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
