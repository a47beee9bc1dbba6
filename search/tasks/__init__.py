"""Study tasks: what kind of model a study compresses, each a plug-in of one registry (``prunetune.tasks``).

A TOML config names its task at the top (``task = "decoder"``); without one it
is a vision study, the pipeline of :class:`search.Search`. Every other task is a
:class:`Task` in :data:`TASKS`: it validates its own config, runs its study into
the same SQL store (candidates, Pareto front, Optuna's trials) and prints its
front. ``decoder`` (:mod:`search.tasks._decoder`) searches a decoder-only language
model's per-layer MLP widths, key-value groups and depth under a memory budget
(weights plus KV cache), scored by validation perplexity.
"""

from search.tasks._base import TASKS, VISION, SubmissionError, Task, register_task, task_flags, task_of, task_of_study

__all__ = ["TASKS", "VISION", "SubmissionError", "Task", "register_task", "task_flags", "task_of", "task_of_study"]
