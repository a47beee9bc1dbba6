"""The drivers that schedule a study's candidates (the study's own steps are in :mod:`search.study`).

The drivers share a contract (:class:`search.drivers._base.Driver`) and a
registry keyed by ``search.backend`` (:func:`driver`): ``local`` runs
candidates in this process, ``ray`` on a Ray cluster.
"""

from __future__ import annotations

from search.drivers._base import Driver, driver, driver_names, register_driver

__all__ = ["Driver", "driver", "driver_names", "register_driver"]
