"""Tasks: seeded, deterministic data streams and fixed evaluation sets.

Layer 2 of 7 (model layer, beside models/, values/ and measures/); imports names/ and its own
folder. Tasks come before spec/compile (spec checks a recipe's task options against the task's
`Options` dataclass). A task says what its sequences look like
(`TaskIO`), makes a training batch for any step (a pure function of seed and step, so a
resumed run sees the same data), and fixed evaluation sets (`evaluators`).

Each `Batch` also carries the structural facts that value sources and progress measures
need, so they work on any task that provides them:
    roles             position roles, e.g. {'label': [batch, pos] bool, 'query': ...}
    induction_keys    [batch, query, key] bool: where an ideal induction head looks from each row
    induction_others  [batch, query, key] bool: the wrong answers of the same kind (other labels)

Register a new task with `@register_task`; recipes can then name it.
"""
from __future__ import annotations

from . import affine, fewshot, repeat_tokens, text  # noqa: F401  (register the built-in tasks)
from .base import TASKS, Batch, Task, TaskIO, get_task, register_task, rng_for

__all__ = ["TASKS", "Batch", "Task", "TaskIO", "get_task", "register_task", "rng_for"]
