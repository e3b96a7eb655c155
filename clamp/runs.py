"""`clamp.run`: a recipe's seeds trained into one directory, and the Run object read back.

Flow position: Recipe ─train→ run dir (this module lays out the directory for several
seeds and collects their summaries). With one seed the run's files are in DIR itself;
with several, DIR holds recipe.yaml, plan.txt and summary.json for the recipe, and one
sub-directory `seed_<s>/` per seed. `Run.load(DIR)` reads any such directory back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import budget, store
from .phases import spread
from .compile import check_plans, compile_plan
from .ensemble import expand, make_jobs
from .pool import Job, available_cores, run_jobs
from .recipe import Recipe, dump_recipe
from .spec import load_recipe
from .store import atomic_write, read_json, read_metrics, run_metrics, write_json
from .train import check_dir, train_seed


@dataclass
class SeedRun:
    seed: int
    dir: Path
    summary: dict

    @property
    def metrics(self) -> list[dict]:
        return read_metrics(self.dir / "metrics.jsonl")

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
    def load(cls, path: str | os.PathLike) -> "Run":
        d = Path(path)
        summary = read_json(d / "summary.json") or {}
        subdirs = sorted(p for p in d.glob("seed_*") if p.is_dir())
        seeds = {}
        if subdirs:
            for p in subdirs:
                s = read_json(p / "summary.json") or {}
                seed = int(p.name.split("_", 1)[1])
                seeds[seed] = SeedRun(seed, p, s)
        elif summary:
            seeds[int(summary.get("seed", 0))] = SeedRun(int(summary.get("seed", 0)), d, summary)
        return cls(summary.get("name", d.name), d, seeds, summary)


def seed_dir(out: Path, recipe: Recipe, seed: int) -> Path:
    return out if len(recipe.seeds) == 1 else out / f"seed_{seed}"


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
    out = Path(out) if out is not None else Path("runs") / recipe.name
    check_plans(recipe, metrics_of=run_metrics)                # reject conflicts before touching disk
    budget.check(recipe, max_memory)
    emit = progress or (lambda ev: None)

    def check() -> None:
        for seed in recipe.seeds:
            check_dir(seed_dir(out, recipe, seed), dump_recipe(replace(recipe, seeds=(seed,))))
        if len(recipe.seeds) > 1:
            check_dir(out, dump_recipe(recipe))
    with store.claimed(out, "run", fresh, check, emit):
        if len(recipe.seeds) > 1:
            atomic_write(out / "recipe.yaml", dump_recipe(recipe))
            atomic_write(out / "plan.txt", compile_plan(recipe, metrics_of=run_metrics).text() + "\n")
        workers = workers or min(available_cores(), len(recipe.seeds))

        def solo(key, recipe, seed, run_dir, label) -> Job:
            return Job(key, train_seed, (recipe, seed, run_dir), recipe.train.threads)
        jobs = make_jobs([(seed, recipe, seed, seed_dir(out, recipe, seed), None) for seed in recipe.seeds],
                         workers, ensemble, solo, max_memory=max_memory)
        outcomes = [o for job in run_jobs(jobs, workers, on_event=progress) for o in expand(job)]
        summaries = {}
        for o in outcomes:
            if o.error is None:
                summaries[o.key] = o.value
                continue
            d = seed_dir(out, recipe, o.key)                # the worker died: its summary says so
            sm = read_json(d / "summary.json")
            if not sm or sm.get("status") == "ok" or sm.get("name") is None:
                sm = {"name": recipe.name, "seed": o.key, "status": "failed", "error": o.error}
                if d.is_dir():
                    with store.writer(d, "seed run", what=str(d)):
                        write_json(d / "summary.json", sm)
            summaries[o.key] = sm
            emit({"event": "done", "seed": o.key, "status": "failed", "error": o.error})
        if len(recipe.seeds) > 1:
            write_json(out / "summary.json", aggregate(recipe, summaries))
    return Run.load(out)
