"""The files clamp writes, and the rules for writing them.

Store layer: below the training loop and the suite runner, above recipes. It owns the run and
suite directory format's mechanics:

- every file is written atomically (a temporary `.NAME.tmp<pid>` beside it, then a rename), so a
  kill leaves the old file or the new one, never half of one; metrics.jsonl is the one
  append-only file (a line at a time; a line cut by a kill is dropped when read back);
- JSON is always valid JSON: a NaN or infinite number is written as null and named, with what it
  was, under "non_finite";
- which directories are clamp's, what in them clamp wrote, and one writer per directory are
  owned.py's (a verified marker and a manifest; flock on `.clamp.lock`); every atomic write here
  asks it first, so clamp never replaces a file it did not write;
- checkpoints are loaded with `torch.load(weights_only=True)`: no code is ever unpickled.

It also owns the layout, so no other module builds these paths by hand:

    <suite dir>/runs/<run id>/seed_<s>/       run_dir(suite, run id, seed)
    <run dir>/seed_<s>/                       seed_dir(run dir, seed)   (a run of several seeds)
    <run dir>/checkpoints/step_0001000.pt     checkpoint_path(run dir, step)

and loading a trained model back from a run directory (`load_model`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import InputError
from .owned import MARKER, LOCK, check_writable, claimed, guard, make_dir, marker, record, remove, writer  # noqa: F401
from .plugins import reading_directory
from .seam import build
from .spec import load_recipe



# ---------------------------------------------------------------------------------------
# JSON that stays JSON


def finite(obj: Any) -> tuple[Any, dict]:
    """`obj` with every NaN/inf float replaced by None, and {key path: 'nan'|'inf'|'-inf'} of those."""
    bad: dict[str, str] = {}

    def walk(x, path):
        if isinstance(x, float) and not math.isfinite(x):
            bad[path or "(value)"] = "nan" if x != x else ("inf" if x > 0 else "-inf")
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
        return x
    return walk(obj, ""), bad


def dumps(obj: dict, indent: int | None = None) -> str:
    """JSON of a mapping; non-finite numbers become null, listed under "non_finite"."""
    clean, bad = finite(obj)
    if bad:
        clean = {**clean, "non_finite": {**clean.get("non_finite", {}), **bad}}
    return json.dumps(clean, indent=indent, allow_nan=False, default=str)


def read_json(path: str | os.PathLike) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        return out if isinstance(out, dict) else None
    except (OSError, ValueError):
        return None


def run_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The metrics rows of a run directory ([] when it has none)."""
    return read_metrics(Path(run_dir) / "metrics.jsonl")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl (or probes.jsonl); a line cut by a kill ends the read."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        break
                    if not isinstance(row, dict):
                        break
                    rows.append(row)
    except (OSError, UnicodeDecodeError):
        pass
    return rows


# ---------------------------------------------------------------------------------------
# Atomic writes


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to make the file, then move it into place; no temporary is left behind.
    Inside a directory clamp holds, the path is recorded as clamp's first, and a file clamp did not
    write is never replaced (InputError)."""
    path = Path(path)
    guard(path)
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")
    return atomic_save(path, write)


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    return atomic_write(path, dumps(obj, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# The layout


def seed_dir(run_dir: str | os.PathLike, seed: int) -> Path:
    """One seed's directory inside a run of several seeds (or a suite's run)."""
    return Path(run_dir) / f"seed_{seed}"


def seed_dirs(run_dir: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob("seed_*") if p.is_dir())


def run_label(run_id: str, seed: int) -> str:
    """How a suite's run is named in progress lines and messages: `<run id>/seed_<s>`."""
    return f"{run_id}/seed_{seed}"


def run_dir(suite_dir: str | os.PathLike, run_id: str, seed: int) -> Path:
    """A suite's run of one seed: `<suite dir>/runs/<run id>/seed_<s>`."""
    return seed_dir(runs_dir(suite_dir) / run_id, seed)


def runs_dir(suite_dir: str | os.PathLike) -> Path:
    return Path(suite_dir) / "runs"


# ---------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    d = Path(run_dir) / "checkpoints"
    out = []
    for p in d.glob("step_*.pt") if d.is_dir() else ():
        try:
            out.append((int(p.stem.split("_")[1]), p))
        except (IndexError, ValueError):
            continue
    return sorted(out)


def save_checkpoint(run_dir: Path, step: int, state: dict) -> Path:
    path = checkpoint_path(run_dir, step)
    make_dir(path.parent)
    return atomic_save(path, lambda tmp: torch.save(state, tmp))


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


def resume(run_dir: str | os.PathLike, load: Callable[[dict], None]) -> list[dict]:
    """Give `load` the newest checkpoint of a run that reads and loads (a partial run resumes from
    it); returns the newer ones that did not ({checkpoint, reason}), newest first. When none loads,
    the newest one's error is raised. A run without checkpoints loads nothing."""
    skipped: list[dict] = []
    first: Exception | None = None
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            load(load_checkpoint(path))
            return skipped
        except (InputError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            first = first or e
            skipped.append({"checkpoint": str(path), "reason": " ".join(f"{type(e).__name__}: {e}".split())[:200]})
    if first is not None:
        raise first
    return skipped


class LoadedModel:
    """A trained run's model at one checkpoint: its recipe, the model behind the seam, the step."""

    def __init__(self, recipe, seam, step: int):
        self.recipe, self.seam, self.step = recipe, seam, step


def load_model(run: str | os.PathLike, step: int = -1, seed: int | None = None) -> LoadedModel:
    """The model of a run directory (recipe.yaml + checkpoints/) at checkpoint `step` (-1: its
    last), frozen for reading (eval mode, no gradients); InputError when there is none."""
    d = Path(run)
    if not (d / "recipe.yaml").is_file():
        raise InputError(str(d), "", "no recipe.yaml", "a run directory written by `clamp run`")
    with reading_directory(str(d / "recipe.yaml")):
        recipe = load_recipe(d / "recipe.yaml")
    ckpts = dict(list_checkpoints(d))
    if not ckpts:
        raise InputError(str(d), "", "a run without checkpoints", "a run with checkpoints/ (a finished run)")
    s = max(ckpts) if step < 0 else step
    if s not in ckpts:
        raise InputError(str(d), "step", str(step), "a checkpoint step: " + ", ".join(map(str, sorted(ckpts))))
    seam = build(recipe.shape(), recipe.seeds[0] if seed is None else seed)
    seam.module.load_state_dict(load_checkpoint(ckpts[s])["model"])
    seam.module.eval()
    for p in seam.module.parameters():
        p.requires_grad_(False)
    return LoadedModel(recipe, seam, s)
