"""`clamp.run`: a recipe's seeds trained into one directory, and the Run object read back.

Flow position: Recipe ─train→ run dir (this module lays out the directory for several
seeds and collects their summaries). With one seed the run's files are in DIR itself;
with several, DIR holds recipe.yaml, plan.txt and summary.json for the recipe, and one
sub-directory `seed_<s>/` per seed. `Run.load(DIR)` reads any such directory back.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..names.phases import spread
from ..recipe import budget
from ..recipe.compile import check_plans, compile_plan
from ..recipe.spec import load_recipe
from ..recipe.types import Recipe, dump_recipe
from ..store.owned import claimed
from ..store.rundir import RecipeDir, RunDir, default_dir, run_metrics
from .grouping import expand, make_jobs
from .pool import Job, available_cores, run_jobs
from .train import train_seed


@dataclass
class SeedRun:
    seed: int
    dir: Path
    summary: dict

    @property
    def metrics(self) -> list[dict]:
        return RunDir(self.dir).metrics()

    @property
    def status(self) -> str:
        return self.summary.get("status", "missing")


@dataclass
class Run:
    name: str
    dir: Path
    seeds: dict[int, SeedRun] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def metrics(self) -> list[dict]:
        return [row for s in self.seeds.values() for row in s.metrics]

    def crossing(self, column: str = "loss", rule: str = "below") -> dict[int, int | None]:
        """Phase-change step per seed for one column and rule."""
        return {s: r.summary.get("phases", {}).get(column, {}).get(rule, {}).get("step")
                for s, r in self.seeds.items()}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        d = RecipeDir(path)
        summary = d.summary() or {}
        seeds = {s: SeedRun(s, rd.path, rd.summary() or {}) for s, rd in d.seed_runs().items()}
        return cls(summary.get("name", d.path.name), d.path, seeds, summary)


def aggregate(recipe: Recipe, summaries: dict[int, dict]) -> dict:
    """The recipe-level summary: per-seed phase steps and their median and range; status 'ok'
    only when there is at least one seed and every seed finished."""
    phases: dict = {}
    for col, rules in recipe.phases.items():
        for rule in rules:
            steps = {s: sm.get("phases", {}).get(col, {}).get(rule, {}).get("step")
                     for s, sm in summaries.items()}
            got = [v for v in steps.values() if v is not None]
            phases.setdefault(col, {})[rule] = {
                "per_seed": steps, **spread(got), "n_changed": len(got), "n": len(steps)}
    ok = bool(summaries) and all(sm.get("status") == "ok" for sm in summaries.values())
    failed = sorted(s for s, sm in summaries.items() if sm.get("status") != "ok")
    return {"name": recipe.name, "status": "ok" if ok else "failed",
            **({"error": f"seed(s) {', '.join(map(str, failed))} failed: see seed_<s>/summary.json"}
               if failed else {}),
            "seeds": {str(s): sm for s, sm in summaries.items()}, "phases": phases}


def run(recipe: Recipe | str | os.PathLike, out: str | os.PathLike | None = None, *,
        workers: int | None = None, progress: Callable[[dict], None] | None = None,
        fresh: bool = False, max_memory: float | None = None, ensemble: bool = True) -> Run:
    """Train every seed of `recipe` into `out` (default runs/<name>); resumes what is there.

    Refused (InputError, nothing written) when the recipe's plan has conflicts, when its memory
    estimate is above `max_memory` bytes (default: half this machine's memory; math.inf lifts it),
    or when `out` is not a directory clamp may write (another process's, or one clamp did not
    make). A seed that fails still has its summary.json (status 'failed', the reason, error.log).
    With `ensemble` (the default) the seeds train together as one batched model where the model
    allows (ensemble.py), as many ensembles as workers; each seed's directory is what it would be alone."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out) if out is not None else default_dir(recipe.name)
    rdir = RecipeDir(out, recipe.seeds)
    check_plans(recipe, metrics_of=run_metrics)                # reject conflicts before touching disk
    budget.check(recipe, max_memory)
    emit = progress or (lambda ev: None)

    def check() -> None:
        for seed in recipe.seeds:
            rdir.seed(seed).check(dump_recipe(replace(recipe, seeds=(seed,))))
        if len(recipe.seeds) > 1:
            RunDir(out).check(dump_recipe(recipe))
    with claimed(out, "run", fresh, check, emit):
        if len(recipe.seeds) > 1:
            rdir.write_recipe(dump_recipe(recipe), compile_plan(recipe, metrics_of=run_metrics).text())
        workers = workers or min(available_cores(), len(recipe.seeds))

        def solo(key, recipe, seed, run_dir, label) -> Job:
            return Job(key, train_seed, (recipe, seed, run_dir), recipe.train.threads)
        jobs = make_jobs([(seed, recipe, seed, rdir.seed(seed).path, None) for seed in recipe.seeds],
                         workers, ensemble, solo, max_memory=max_memory)
        outcomes = [o for job in run_jobs(jobs, workers, on_event=progress) for o in expand(job)]
        summaries = {}
        for o in outcomes:
            if o.error is None:
                summaries[o.key] = o.value
                continue
            summaries[o.key] = rdir.seed(o.key).record_failure(recipe.name, o.key, o.error)   # the worker died
            emit({"event": "done", "seed": o.key, "status": "failed", "error": o.error})
        if len(recipe.seeds) > 1:
            rdir.finish(aggregate(recipe, summaries))
    return Run.load(out)
