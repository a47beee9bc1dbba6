"""Search: Optuna ask/tell studies over compression plans, the run configuration and the ``prunetune`` CLI.

By role: :mod:`search.cli` (the ``prunetune`` command), :mod:`search.drivers`
(preparing a study, the drivers that schedule candidates, one candidate's
life), :mod:`search.operations` (after a study: finalize, export, report data)
and :mod:`search.service` (``prunetune serve``: the app, its API models and
the worker); the run configuration (:mod:`search._config`) and the map from
failures to exit codes (:mod:`search._exit_codes`) serve them all.

Imports are lazy (PEP 562): ``import search`` loads none of torch, optuna,
SQLAlchemy or pydantic; each name's module is imported when the name is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces import lazy_exports

if TYPE_CHECKING:
    from search._config import Config, load_config
    from search.operations._export import export_candidate, load_exported
    from search.operations._finalize import Finalized, finalize
    from search.preparation._prepare import Prepared, prepare
    from search.sampling._samplers import SAMPLERS, Sampler, SamplerFactory, make_sampler, register_sampler
    from search.study._candidate import CandidateRunner, Outcome, Timings, worker_id
    from search.study._rungs import promotes, promotion_order
    from search.study._study import RunResult, Search

__all__ = [
    "SAMPLERS",
    "CandidateRunner",
    "Config",
    "Finalized",
    "Outcome",
    "Prepared",
    "RunResult",
    "Sampler",
    "SamplerFactory",
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
    "register_sampler",
    "worker_id",
]

_WHERE = {
    "CandidateRunner": "study._candidate",
    "Config": "_config",
    "Finalized": "operations._finalize",
    "Outcome": "study._candidate",
    "Prepared": "preparation._prepare",
    "RunResult": "study._study",
    "SAMPLERS": "sampling._samplers",
    "Sampler": "sampling._samplers",
    "SamplerFactory": "sampling._samplers",
    "Search": "study._study",
    "Timings": "study._candidate",
    "export_candidate": "operations._export",
    "finalize": "operations._finalize",
    "load_config": "_config",
    "load_exported": "operations._export",
    "make_sampler": "sampling._samplers",
    "prepare": "preparation._prepare",
    "promotes": "study._rungs",
    "promotion_order": "study._rungs",
    "register_sampler": "sampling._samplers",
    "worker_id": "study._candidate",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
