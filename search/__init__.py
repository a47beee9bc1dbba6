"""The search over plans and the ``prunetune`` command line (:mod:`search.cli`)."""

__all__: list[str] = []
