"""Preparing a study: the model, its space, data, baseline, evaluator and the store's study row
(:func:`search.preparation._prepare.prepare`), and the device profile a latency budget reads
(:mod:`search.preparation._profile`). Run once per study and process; finalize reuses it.
"""

from __future__ import annotations
