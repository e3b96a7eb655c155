"""`clamp.run`: a recipe's seeds trained into one directory, and the Run object read back.

Flow position: Recipe ─train→ run dir (this module lays out the directory for several
seeds and collects their summaries). With one seed the run's files are in DIR itself;
with several, DIR holds recipe.yaml, plan.txt and summary.json for the recipe, and one
sub-directory `seed_<s>/` per seed. `Run.load(DIR)` reads any such directory back.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .compile import compile_plan
from .pool import Job, available_cores, run_jobs
from .spec import Recipe, dump_recipe, load_recipe
from .train import atomic_write, check_dir, read_json, read_metrics, train_seed


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
    """The recipe-level summary: per-seed phase steps and their median and range."""
    phases: dict = {}
    for col, rules in recipe.phases.items():
        for rule in rules:
            steps = {s: sm.get("phases", {}).get(col, {}).get(rule, {}).get("step")
                     for s, sm in summaries.items()}
            got = [v for v in steps.values() if v is not None]
            phases.setdefault(col, {})[rule] = {
                "per_seed": steps,
                "median": statistics.median(got) if got else None,
                "min": min(got) if got else None, "max": max(got) if got else None,
                "n_changed": len(got), "n": len(steps)}
    status = "ok" if all(sm.get("status") == "ok" for sm in summaries.values()) else "failed"
    return {"name": recipe.name, "status": status, "seeds": {str(s): sm for s, sm in summaries.items()},
            "phases": phases}


def run(recipe: Recipe | str | os.PathLike, out: str | os.PathLike | None = None, *,
        workers: int | None = None, progress: Callable[[dict], None] | None = None,
        fresh: bool = False) -> Run:
    """Train every seed of `recipe` into `out` (default runs/<name>); resumes what is there."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out) if out is not None else Path("runs") / recipe.name
    compile_plan(recipe)                                   # reject conflicts before touching disk
    if fresh and out.exists():
        shutil.rmtree(out)
    for seed in recipe.seeds:
        check_dir(seed_dir(out, recipe, seed), dump_recipe(replace(recipe, seeds=(seed,))))
    if len(recipe.seeds) > 1:
        check_dir(out, dump_recipe(recipe))
    out.mkdir(parents=True, exist_ok=True)
    if len(recipe.seeds) > 1:
        atomic_write(out / "recipe.yaml", dump_recipe(recipe))
        atomic_write(out / "plan.txt", compile_plan(recipe).text() + "\n")
    jobs = [Job(seed, train_seed, (recipe, seed, seed_dir(out, recipe, seed)), recipe.train.threads)
            for seed in recipe.seeds]
    workers = workers or min(available_cores(), len(jobs))
    outcomes = run_jobs(jobs, workers, on_event=progress)
    summaries = {}
    for o in outcomes:
        if o.error is not None:
            summaries[o.key] = {"seed": o.key, "status": "failed", "error": o.error}
            if progress:
                progress({"event": "done", "seed": o.key, "status": "failed", "error": o.error})
        else:
            summaries[o.key] = o.value
    if len(recipe.seeds) > 1:
        atomic_write(out / "summary.json", json.dumps(aggregate(recipe, summaries), indent=1) + "\n")
    return Run.load(out)
