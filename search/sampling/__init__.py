"""Sampling: the compression space as sampler parameters and back, the samplers, and pruning's blend.

* :mod:`search.sampling._params`: every dimension that plays the sampled role
  (:class:`spaces.dimensions.Sampled`) as Optuna distributions, and back;
* :mod:`search.sampling._samplers`: the registry of Optuna samplers
  ``search.sampler`` chooses from;
* :mod:`search.sampling._blend`: pruning's sampled role in a study (the blend
  of the study's one-shot plans), registered here for the key ``prune``.
"""

from __future__ import annotations

from search.sampling._blend import PruneSampling
from spaces.dimensions import Sampled, register_role

register_role(Sampled, "prune", PruneSampling())
