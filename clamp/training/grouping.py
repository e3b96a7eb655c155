"""Which runs train together: ensemble keys, groups, and the pool jobs they become.

Run layer (runs.py and benches.py hand their runs here; ensemble.py trains a group). Runs of one
model shape that stacks (the built-in transformer on its native backend, or any adapted family
whose members fold into one batch: seam.stack_problem) that share task, optimizer settings, batch
and evaluation schedule can be members of one ensemble; `alone_because` says why any other run
trains alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.seam import stack_problem
from ..recipe.budget import estimate, human, members_that_fit
from ..recipe.types import Recipe
from ..tasks import TASKS
from .ensemble import Progress, train_ensemble
from .pool import Job, Outcome
from .train import install_extensions

# On a CPU an ensemble is faster than its runs one after another only while a step's activations
# stay small: batching removes per-operation overhead, and past a point the members' activations
# together leave the caches and every elementwise operation slows (2-core EPYC, benchmarks/RESULTS.md
# "Ensembles": 1.1-1.9x up to ~15 MiB of training activations per run, 0.65-0.9x at 57-85 MiB).
CPU_ENSEMBLE_MAX_ACTIVATIONS = 24 * 2**20


def alone_because(recipe: Recipe) -> str:
    """Why runs of this recipe train alone, not as members of an ensemble ('' when they can share)."""
    problem = stack_problem(recipe.shape())
    if problem:
        return problem
    device = recipe.train.device
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        act = estimate(recipe).train_bytes
        if act > CPU_ENSEMBLE_MAX_ACTIVATIONS:
            return (f"on a CPU, a run with {human(act)} of training activations per step trains faster alone than "
                    f"batched (ensembles gain up to about {human(CPU_ENSEMBLE_MAX_ACTIVATIONS)})")
    if TASKS[recipe.task.name].own_loss():
        return f"task {recipe.task.name} has a loss of its own (an ensemble's loss is the cross-entropy)"
    targets = [iv.target for iv in (*recipe.interventions, *(i for p in recipe.probes.values() for i in p))]
    if any("module:" in str(t) for t in targets) or any(
            "module:" in str(s) for sc in recipe.subcircuits.values() for s in getattr(sc, "sites", ())):
        return "raw module: sites are torch hooks on one model's modules"
    return ""


def ensemble_key(recipe: Recipe) -> tuple | None:
    """Runs with equal keys can train as one ensemble; None: this run trains alone (`alone_because`)."""
    if alone_because(recipe):
        return None
    shape = recipe.shape()
    t = recipe.train
    return (shape, recipe.task.name, recipe.task.options, t.batch, t.optimizer, t.lr, t.weight_decay, t.betas,
            t.eval_every, t.eval_size, t.evaluators, t.threads, t.device, t.compile)


def groups(recipes: Sequence[Recipe], workers: int, max_members: int = 64,
           max_memory: float | None = None) -> list[list[int]]:
    """Indices of `recipes` (one per run) grouped into ensembles: runs with one `ensemble_key`, split
    into at most `workers` ensembles (so every worker has one) of at most `max_members`, and of no
    more than fit in `max_memory` (budget.members_that_fit; default half this machine's memory);
    a run that can share with none is a group of one. Largest groups first."""
    by_key: dict[Any, list[int]] = {}
    alone: list[list[int]] = []
    for i, r in enumerate(recipes):
        key = ensemble_key(r)
        if key is None:
            alone.append([i])
        else:
            by_key.setdefault(key, []).append(i)
    out: list[list[int]] = []
    for idx in by_key.values():
        cap = min(max_members, members_that_fit(recipes[idx[0]], max_memory))
        n = max(1, min(workers, len(idx)), math.ceil(len(idx) / cap))
        out.extend(idx[j::n] for j in range(n))
    return sorted(out + alone, key=len, reverse=True)


@dataclass(frozen=True)
class GroupKey:
    """The job key of an ensemble: the keys of its runs, in order."""
    keys: tuple


def ensemble_job(entries: list, keys: tuple, ext: dict | None = None, progress: Progress | None = None) -> dict:
    """A pool job: `train_ensemble(entries)`, results by run key (summary dict or error text)."""
    install_extensions(ext or {})
    return dict(zip(keys, train_ensemble(entries, progress)))


RunEntry = tuple[Any, Recipe, int, Any, Any]          # (key, recipe, seed, run dir, progress label)


def make_jobs(runs: list[RunEntry], workers: int, ensemble: bool, solo: Callable[..., Job],
              ext: Callable[[Recipe], dict] | None = None, max_members: int = 64,
              max_memory: float | None = None) -> list[Job]:
    """Pool jobs for runs (key, recipe, seed, run dir, progress label): with `ensemble`, the runs that can
    share train as ensembles (`groups`), the rest alone (`solo(...)` makes their job)."""
    if not ensemble:
        return [solo(*r) for r in runs]
    jobs = []
    for g in groups([r[1] for r in runs], workers, max_members, max_memory):
        if len(g) == 1:
            jobs.append(solo(*runs[g[0]]))
            continue
        rs = [runs[i] for i in g]
        keys = tuple(r[0] for r in rs)
        entries = [(r[1], r[2], str(r[3]), r[4]) for r in rs]
        jobs.append(Job(GroupKey(keys), ensemble_job, (entries, keys, ext(rs[0][1]) if ext else None),
                        rs[0][1].train.threads))
    return jobs


def expand(o: Outcome) -> list[Outcome]:
    """An ensemble job's outcome as one outcome per run (a plain job's as itself)."""
    if not isinstance(o.key, GroupKey):
        return [o]
    if o.error is not None:
        return [Outcome(k, None, o.error) for k in o.key.keys]
    return [Outcome(k, v, None) if isinstance(v, dict) else Outcome(k, None, str(v)) for k, v in o.value.items()]
