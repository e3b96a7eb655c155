"""Running a suite: every variant × grid point × seed trained into its run directory.

Run layer. Flow position: suite.yaml ─suite.py→ Suite ─benches→ many run dirs → results.csv
(→ results.py judges the expectations, report.py renders report.md; api.bench does all three).
The suite file's keys are documented in suite.py and the README. Every run trains into
DIR/runs/<run id>/seed_<s>/ (store.run_dir) and is resumable (train.py); results.csv is rewritten
atomically after each run finishes.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..names import columns as C
from ..names.phases import column_value
from ..names.yamlio import dump_yaml
from ..recipe import budget
from ..recipe.compile import check_plans
from ..recipe.suite import RunSpec, Suite
from ..recipe.types import Recipe, dump_recipe
from ..store.owned import claimed, make_dir
from ..store.rundir import SuiteDir, run_metrics
from .grouping import expand, make_jobs
from .pool import Job, Outcome, available_cores, run_jobs
from .train import extensions_for, install_extensions, train_seed


def _train_job(recipe: Recipe, seed: int, run_dir: str, run_key: str, ext: dict | None = None,
               progress=None) -> dict:
    install_extensions(ext or {})

    def tagged(ev):
        if progress:
            progress({**ev, "run": run_key})
    return train_seed(recipe, seed, run_dir, progress=tagged)


Rows = list[dict]


def run_suite(suite: Suite, out: str | os.PathLike, *, workers: int | None = None, backend: str = "local",
              address: str | None = None, progress: Callable[[dict], None] | None = None,
              fresh: bool = False, max_memory: float | None = None,
              on_rows: Callable[[Rows], None] | None = None, ensemble: bool = True) -> Rows:
    """Run every variant × grid point × seed of a suite into `out` (resuming what is there) and
    return the rows of results.csv (one per run). results.csv is rewritten atomically as each run
    finishes, and `on_rows(rows)` called with the table so far (the API and CLI render report.md
    there: results.py and report.py sit above this layer).

    Refused before anything is written (InputError) when a run's memory estimate is above
    `max_memory`, when `out` is another process's or not clamp's, or when a run directory holds a
    different recipe; `fresh` first deletes `out`'s contents (only if clamp made it). With `ensemble`
    (the default) runs that can share train together as ensembles (ensemble.py), each writing the
    run directory it would write alone."""
    out = Path(out)
    runs = suite.runs()
    for recipe in suite.recipes.values():
        check_plans(recipe, metrics_of=run_metrics)          # conflicts refused before anything runs
        budget.check(recipe, max_memory)
    sd = SuiteDir(out)
    dirs = {(r.id, r.seed): sd.run(r.id, r.seed) for r in runs}
    emit = progress or (lambda ev: None)

    def check() -> None:
        for r in runs:
            dirs[r.id, r.seed].check(dump_recipe(replace(r.recipe, seeds=(r.seed,))))
    with claimed(out, "suite", fresh, check, emit):
        return _run_suite(suite, out, runs, dirs, workers, backend, address, progress, on_rows or (lambda rows: None),
                          ensemble, max_memory)


def _run_suite(suite: Suite, out: Path, runs: list[RunSpec], dirs: dict, workers, backend, address,
               progress, on_rows, ensemble: bool, max_memory: float | None) -> Rows:
    sd = SuiteDir(out)
    sd.write_suite(dump_yaml(suite.data))
    for d in dirs.values():                            # made here, so that this suite's manifest lists them
        make_dir(d.path)                               # (a Ray worker writes into them without this process)
    def solo(key, recipe, seed, run_dir, label) -> Job:
        return Job(key, _train_job, (recipe, seed, str(run_dir), label, extensions_for(recipe)), recipe.train.threads)
    n_workers = workers or available_cores()
    jobs = make_jobs([((r.id, r.seed), r.recipe, r.seed, dirs[r.id, r.seed].path, sd.label(r.id, r.seed))
                      for r in runs], n_workers, ensemble, solo, extensions_for, max_memory=max_memory)
    done: dict = {}

    def write() -> Rows:
        rows = result_rows(runs, done, _at_columns(suite), out)
        sd.write_results(rows_to_csv(rows))
        on_rows(rows)
        return rows

    def finished(job: Outcome) -> None:
        for o in expand(job):
            done[o.key] = o
            if progress and o.error is not None:
                progress({"event": "done", "run": sd.label(*o.key), "status": "failed", "error": o.error})
        write()

    write()
    if backend == "ray":
        from .raybackend import run_jobs_ray
        run_jobs_ray(jobs, address=address, on_event=progress, on_done=finished)
    else:
        run_jobs(jobs, n_workers, on_event=progress, on_done=finished)
    for r in runs:                                     # a run whose worker died still has a summary
        o = done.get((r.id, r.seed))
        if o is not None and o.error is not None:
            dirs[r.id, r.seed].record_failure(r.recipe.name, r.seed, o.error)
    return write()


def collect_rows(suite: Suite, directory: str | os.PathLike) -> Rows:
    """The results rows of a suite directory, re-read from each run's summary.json (nothing runs)."""
    d = Path(directory)
    runs = suite.runs()
    done = {}
    for r in runs:
        sm = SuiteDir(d).run(r.id, r.seed).summary()
        if sm is not None:
            done[(r.id, r.seed)] = Outcome((r.id, r.seed), sm)
    return result_rows(runs, done, _at_columns(suite), d)


def _at_columns(suite: Suite) -> set[str]:
    qs = {op.of for e in suite.expect for op in (e.a, e.b) if op is not None}
    return {q for q in qs if q.startswith("at:")}


def result_rows(runs: list[RunSpec], done: dict, at: set[str] | frozenset[str] = frozenset(),
                base: Path | None = None) -> Rows:
    rows = []
    for r in runs:
        o = done.get((r.id, r.seed))
        row: dict = {"run": r.id, "variant": r.variant, "grid": r.point, "seed": r.seed}
        if o is None:
            row.update(status="pending")
        elif o.error is not None:
            row.update(status="failed", error=o.error)
        else:
            s = o.value
            row.update(status=s.get("status"), error=s.get("error") or "", wall_s=s.get("wall_s"),
                       steps=s.get("steps"), resumed_from=s.get("resumed_from"))
            for col, rules in s.get("phases", {}).items():
                for rule, res in rules.items():
                    if isinstance(res, dict):
                        row[C.crossing_column(col, rule)] = res.get("step")
                        for fld in ("reach", "leave", "fraction", "plateau_over_reach"):
                            if fld in res:
                                row[C.phase_column(col, rule, fld)] = res[fld]
            for col, v in s.get("final", {}).items():
                if isinstance(v, (int, float)):
                    row[C.final_column(col)] = v
            if at and base is not None:
                metrics = SuiteDir(base).run(r.id, r.seed).metrics()
                for q in at:
                    _, step, col = q.split(":", 2)
                    row[q] = next((column_value(m, col) for m in metrics if m["step"] == int(step)), None)
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    fixed = ["variant", "grid", "seed", "status", "error", "wall_s", "steps", "resumed_from", "run"]
    extra = sorted({k for r in rows for k in r} - set(fixed), key=lambda k: (not k.startswith("crossing"), k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fixed + extra, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fixed + extra})
    return buf.getvalue()


