"""A study's own steps, the same under every driver: ask and tell (:class:`Search`), one candidate's life,
the rungs of successive halving, the re-scoring of the best few, and the front measured on the device.

:class:`search.study._study.Search` is the facade the CLI, the service and
the drivers (:mod:`search.drivers`, which only schedule) call;
:mod:`search.study._candidate` evaluates and records one candidate.
"""

from __future__ import annotations
