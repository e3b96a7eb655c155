"""Run and suite directories: the one place that knows their paths, file names and life cycle.

Store layer (the training loop, ensembles, runs, suites, probes, reports and the CLI ask this
module; none of them spells a file name of a run directory). The layout:

    <run dir>/                      one seed's run (RunDir)
        recipe.yaml                 the resolved recipe (seeds: [this seed]); a different one is refused
        plan.txt                    the compiled timeline
        metrics.jsonl               one JSON object per evaluation (append-only; cut back on resume)
        summary.json                status, final measures, phase-change times, timings (written last)
        error.log                   the traceback of a failed run
        checkpoints/step_0001000.pt {step, model, optimizer} (loaded with weights_only)
        discovery.json              `clamp discover`: every head's roles, scores and effects
    <recipe dir>/                   `clamp run` of several seeds (RecipeDir): recipe.yaml, plan.txt,
        seed_<s>/                   summary.json for the recipe, and one RunDir per seed
    <suite dir>/                    `clamp bench` (SuiteDir): suite.yaml, results.csv, report.md,
        runs/<run id>/seed_<s>/     loss_curves.png, report.html, report/*.png, and a RunDir per run

A RunDir's life: `check` (read only: empty, or the same recipe) → `held()` (the writer lock) →
`begin` (a finished run is returned as is; else the old summary and error log go and the recipe
is written) → `resume(load)` (the newest checkpoint that loads; metrics cut back to it) → rows
appended, checkpoints saved → `fail(exception)` and/or `finish(summary)`.
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

from ..models.plugins import reading_directory
from ..models.seam import build
from ..names.errors import InputError
from ..recipe.spec import load_recipe
from .files import atomic_save, atomic_write, dumps, read_json, read_metrics, write_json
from .owned import make_dir, marker, remove, writer

RECIPE, PLAN, METRICS, SUMMARY, ERROR_LOG, CHECKPOINTS, DISCOVERY = (
    "recipe.yaml", "plan.txt", "metrics.jsonl", "summary.json", "error.log", "checkpoints", "discovery.json")
SUITE, RESULTS, REPORT_MD, RUNS = "suite.yaml", "results.csv", "report.md", "runs"
REPORT_HTML, REPORT_PICTURES, CURVES = "report.html", "report", "loss_curves.png"


def default_dir(name: str) -> Path:
    """Where a run or suite goes when no --out is given: runs/<name>."""
    return Path("runs") / name


class RunDir:
    """One seed's run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- reading -------------------------------------------------------------------------

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def error_log(self) -> Path:
        return self.path / ERROR_LOG

    @property
    def discovery_file(self) -> Path:
        return self.path / DISCOVERY

    def summary(self) -> dict | None:
        return read_json(self.summary_file)

    def metrics(self) -> list[dict]:
        return read_metrics(self.path / METRICS)

    def file(self, name: str) -> Path:
        """Another file of the run's (a probes file's results, for one)."""
        return self.path / name

    def checkpoint(self, step: int) -> Path:
        return self.path / CHECKPOINTS / f"step_{step:07d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        d = self.path / CHECKPOINTS
        out = []
        for p in d.glob("step_*.pt") if d.is_dir() else ():
            try:
                out.append((int(p.stem.split("_")[1]), p))
            except (IndexError, ValueError):
                continue
        return sorted(out)

    def recipe(self):
        """The run's resolved recipe (its plug-ins imported only as plugins.reading_directory allows)."""
        if not self.recipe_file.is_file():
            raise InputError(str(self.path), "", f"no {RECIPE}", "a run directory written by `clamp run`")
        with reading_directory(str(self.recipe_file)):
            return load_recipe(self.recipe_file)

    # -- the life cycle --------------------------------------------------------------------

    def check(self, resolved: str) -> None:
        """InputError unless the directory is empty, missing, or holds a run of this same recipe (reads only)."""
        if self.recipe_file.exists() and self.recipe_file.read_text(encoding="utf-8") != resolved:
            raise InputError(str(self.path), "", "a run directory that holds a different recipe",
                             "an empty directory or one from the same recipe",
                             "choose another --out, or pass --fresh to overwrite it")

    @contextmanager
    def held(self) -> Iterator[dict]:
        """The writer lock of this directory (made, and claimed for clamp, if new)."""
        with writer(self.path, "seed run", what=str(self.path)) as info:
            yield info

    def finished(self) -> dict | None:
        """The summary of a run that finished (status ok), else None."""
        sm = self.summary()
        return sm if sm and sm.get("status") == "ok" else None

    def begin(self, resolved: str) -> dict | None:
        """(Holding the lock.) A finished run's summary, returned as is; otherwise the run starts or
        resumes: the old summary and error log go and the resolved recipe is written. None then."""
        self.check(resolved)
        done = self.finished()
        if done is not None:
            return done
        remove(self.summary_file)
        remove(self.error_log)
        atomic_write(self.recipe_file, resolved)
        return None

    def write_plan(self, text: str) -> None:
        atomic_write(self.path / PLAN, text + "\n")

    def resume(self, load: Callable[[dict], None]) -> tuple[int, list[dict], list[dict]]:
        """Give `load` the newest checkpoint that reads and loads, and cut metrics.jsonl back to the rows
        before its step. Returns (its step, or 0; the rows kept; the newer checkpoints that did not load,
        newest first, {checkpoint, reason}). When none of several loads, the newest one's error is raised."""
        skipped: list[dict] = []
        first: Exception | None = None
        step = 0
        for s, path in reversed(self.checkpoints()):
            try:
                state = load_checkpoint(path)
                load(state)
                step = int(state.get("step", s))
                break
            except (InputError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
                first = first or e
                skipped.append({"checkpoint": str(path), "reason": " ".join(f"{type(e).__name__}: {e}".split())[:200]})
        else:
            if first is not None:
                raise first
        rows = [r for r in self.metrics() if r.get("step", -1) < step]
        atomic_write(self.path / METRICS, "".join(dumps(r) + "\n" for r in rows))
        return step, rows, skipped

    def metrics_appender(self) -> IO[str]:
        """metrics.jsonl opened for appending one row at a time (after `resume`)."""
        return open(self.path / METRICS, "a", encoding="utf-8")

    @staticmethod
    def append(stream: IO[str], row: dict) -> None:
        stream.write(dumps(row) + "\n")
        stream.flush()

    def save_checkpoint(self, step: int, state: dict) -> Path:
        path = self.checkpoint(step)
        make_dir(path.parent)
        return atomic_save(path, lambda tmp: torch.save(state, tmp))

    def fail(self, e: BaseException) -> None:
        """Keep the traceback of what ended the run (error.log)."""
        atomic_write(self.error_log, "".join(traceback.format_exception(e)))

    def finish(self, summary: dict) -> dict:
        """Write summary.json (the run's last file); a failed run's names its error.log when there is one."""
        if summary.get("status") != "ok" and self.error_log.exists():
            summary = {**summary, "error_log": ERROR_LOG}
        write_json(self.summary_file, summary)
        return summary

    def record_failure(self, name: str, seed: int, error: str) -> dict:
        """A run whose worker died before it could say so: a failed summary, unless it has one already."""
        sm = self.summary()
        if sm and sm.get("status") not in (None, "ok") and sm.get("name") is not None:
            return sm
        sm = {"name": name, "seed": seed, "status": "failed", "error": error}
        if self.path.is_dir():
            with self.held():
                write_json(self.summary_file, sm)
        return sm


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's tensors (weights only: no code runs); InputError when it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable or foreign file is bad input here
        raise InputError(str(path), "", f"a file that is not a clamp checkpoint ({type(e).__name__})",
                         "a checkpoint written by clamp (torch.save of {step, model, optimizer})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise InputError(str(path), "", "a file without model weights", "a checkpoint written by clamp")
    return state


def run_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The metrics rows of a run directory ([] when it has none), with the per-head columns that
    `clamp discover` scored at its checkpoints added to the rows of those steps (a column the run
    measured itself is never replaced): `select: {run: ...}` can choose heads by a discovered role."""
    rd = RunDir(run_dir)
    rows = rd.metrics()
    found = read_json(rd.discovery_file) if rd.discovery_file.is_file() else None
    if not rows or not isinstance(found, dict) or not isinstance(found.get("columns"), dict):
        return rows
    steps = found.get("checkpoints", [])
    at = {r.get("step"): r for r in rows}
    for col, values in found["columns"].items():
        for step, v in zip(steps, values if isinstance(values, list) else []):
            if step in at and col not in at[step] and isinstance(v, (int, float)):
                at[step][col] = v
    return rows


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    return RunDir(run_dir).checkpoints()


class RecipeDir:
    """`clamp run`'s directory: with one seed, that seed's RunDir itself; with several, the recipe's
    files and one `seed_<s>/` RunDir per seed."""

    def __init__(self, path: str | os.PathLike, seeds: tuple[int, ...] | None = None):
        self.path = Path(path)
        self._seeds = seeds

    def seed(self, s: int) -> RunDir:
        if self._seeds is not None and len(self._seeds) == 1:
            return RunDir(self.path)
        return RunDir(self.path / f"seed_{s}")

    def seed_runs(self) -> dict[int, RunDir]:
        """The seeds' directories found on disk (a one-seed run: the directory itself, by its summary)."""
        subdirs = sorted(p for p in self.path.glob("seed_*") if p.is_dir())
        out = {}
        for p in subdirs:
            try:
                out[int(p.name.split("_", 1)[1])] = RunDir(p)
            except ValueError:
                continue
        if not out:
            sm = read_json(self.path / SUMMARY)
            if sm:
                out[int(sm.get("seed", 0))] = RunDir(self.path)
        return out

    def summary(self) -> dict | None:
        return read_json(self.path / SUMMARY)

    def recipe(self):
        """The recipe the run was made from (all its seeds)."""
        return RunDir(self.path).recipe()

    def write_recipe(self, text: str, plan: str) -> None:
        atomic_write(self.path / RECIPE, text)
        atomic_write(self.path / PLAN, plan + "\n")

    def finish(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)


class SuiteDir:
    """`clamp bench`'s directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def run(self, run_id: str, seed: int) -> RunDir:
        return RunDir(self.path / RUNS / run_id / f"seed_{seed}")

    @staticmethod
    def label(run_id: str, seed: int) -> str:
        """How a suite's run is named in progress lines and messages: `<run id>/seed_<s>`."""
        return f"{run_id}/seed_{seed}"

    @property
    def suite_file(self) -> Path:
        return self.path / SUITE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    @property
    def report_md(self) -> Path:
        return self.path / REPORT_MD

    def write_suite(self, text: str) -> None:
        atomic_write(self.suite_file, text)

    def write_results(self, text: str) -> None:
        atomic_write(self.results_file, text)

    @staticmethod
    def holds(path: str | os.PathLike) -> bool:
        """A suite's directory: by its marker where it has one, else by its results table (for reading)."""
        m = marker(path)
        return m.kind == "suite" if m is not None else (Path(path) / RESULTS).is_file()


def run_dir(suite_dir: str | os.PathLike, run_id: str, seed: int) -> Path:
    """A suite's run of one seed: `<suite dir>/runs/<run id>/seed_<s>`."""
    return SuiteDir(suite_dir).run(run_id, seed).path


def report_paths(directory: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(report.html, the folder of its pictures, loss_curves.png) of a run or suite directory."""
    d = Path(directory)
    return d / REPORT_HTML, d / REPORT_PICTURES, d / CURVES


class LoadedModel:
    """A trained run's model at one checkpoint: its recipe, the model behind the seam, the step."""

    def __init__(self, recipe, seam, step: int):
        self.recipe, self.seam, self.step = recipe, seam, step


def load_model(run: str | os.PathLike, step: int = -1, seed: int | None = None) -> LoadedModel:
    """The model of a run directory (recipe.yaml + checkpoints/) at checkpoint `step` (-1: its
    last), frozen for reading (eval mode, no gradients); InputError when there is none."""
    rd = RunDir(run)
    recipe = rd.recipe()
    ckpts = dict(rd.checkpoints())
    if not ckpts:
        raise InputError(str(rd.path), "", "a run without checkpoints", "a run with checkpoints/ (a finished run)")
    s = max(ckpts) if step < 0 else step
    if s not in ckpts:
        raise InputError(str(rd.path), "step", str(step), "a checkpoint step: " + ", ".join(map(str, sorted(ckpts))))
    seam = build(recipe.shape(), recipe.seeds[0] if seed is None else seed)
    seam.module.load_state_dict(load_checkpoint(ckpts[s])["model"])
    seam.module.eval()
    for p in seam.module.parameters():
        p.requires_grad_(False)
    return LoadedModel(recipe, seam, s)
