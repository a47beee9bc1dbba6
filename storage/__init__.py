"""The SQL study store (SQLAlchemy): candidates, plans, metrics and the Pareto front."""

__all__: list[str] = []
