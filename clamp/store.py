"""The files clamp writes, and the rules for writing them.

Store layer: below the training loop and the suite runner, above recipes. It owns the run and
suite directory format's mechanics:

- every file is written atomically (a temporary `.NAME.tmp<pid>` beside it, then a rename), so a
  kill leaves the old file or the new one, never half of one; metrics.jsonl is the one
  append-only file (a line at a time; a line cut by a kill is dropped when read back);
- JSON is always valid JSON: a NaN or infinite number is written as null and named, with what it
  was, under "non_finite";
- a directory clamp made holds a marker file `.clamp`; `--fresh` deletes only such a directory's
  contents, and clamp writes into an existing directory only if it is empty or clamp's own;
- one writer per directory: `writer(dir)` holds an OS lock (flock on `.clamp.lock`) for as long
  as a process writes there; a second writer gets a one-line error (exit 2), and stale
  temporary files of a killed writer are removed when the next one takes the lock;
- checkpoints are loaded with `torch.load(weights_only=True)`: no code is ever unpickled.

It also owns the layout, so no other module builds these paths by hand:

    <suite dir>/runs/<run id>/seed_<s>/       run_dir(suite, run id, seed)
    <run dir>/seed_<s>/                       seed_dir(run dir, seed)   (a run of several seeds)
    <run dir>/checkpoints/step_0001000.pt     checkpoint_path(run dir, step)

and loading a trained model back from a run directory (`load_model`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import InputError
from .seam import build
from .spec import load_recipe

MARKER = ".clamp"
LOCK = ".clamp.lock"
# what a run or suite directory of an older clamp (before markers) holds: adopted on resume
_LEGACY = (("recipe.yaml", "metrics.jsonl"), ("recipe.yaml", "summary.json"), ("suite.yaml", "results.csv"))


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
    """Call `write(tmp)` to make the file, then move it into place; no temporary is left behind."""
    path = Path(path)
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


def remove_stale(directory: Path) -> list[Path]:
    """Temporary files a killed writer left in `directory` and its checkpoints/ (call with the lock held)."""
    out = []
    for d in (directory, directory / "checkpoints"):
        if d.is_dir():
            for p in d.glob(".*.tmp*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    out.append(p)
    return out


# ---------------------------------------------------------------------------------------
# Directories: markers, ownership, one writer


def is_clamps(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def _legacy(directory: Path) -> bool:
    return any(all((directory / f).is_file() for f in files) for files in _LEGACY)


def _contents(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name != LOCK]


def check_writable(directory: Path, what: str = "--out") -> None:
    """InputError unless clamp may write into `directory`: missing (its parent a writable directory),
    empty, or a directory clamp made. Reads only."""
    d = Path(directory)
    if "\x00" in str(d):
        raise InputError(what, "", repr(str(d))[:80], "a directory path without NUL bytes")
    if d.exists() and not d.is_dir():
        raise InputError(what, "", f"{str(d)!r}, which is not a directory", "a directory for the run's files")
    if d.is_dir():
        if not os.access(d, os.W_OK | os.X_OK):
            raise InputError(what, "", f"{str(d)!r}, which is not writable", "a directory clamp can write into")
        if _contents(d) and not is_clamps(d) and not _legacy(d):
            first = sorted(p.name for p in _contents(d))[:3]
            raise InputError(what, "", f"{str(d)!r}, a directory clamp did not make (it holds {', '.join(first)}"
                             f"{', ...' if len(_contents(d)) > 3 else ''})",
                             "an empty or new directory, or one clamp wrote", "choose another --out")
        return
    parent = d.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(what, "", f"{str(d)!r}, which cannot be created ({str(parent)!r} is not a writable "
                         "directory)", "a directory clamp can create")


_held: dict[str, tuple[int, int]] = {}        # this process's locks: real path → (fd, depth)


@contextmanager
def writer(directory: str | os.PathLike, kind: str, fresh: bool = False, what: str = "--out") -> Iterator[dict]:
    """Hold `directory` for writing: create it, take its lock (re-entrant within a process and its
    forked children), with `fresh` delete its contents (only if clamp made it), mark it as clamp's,
    and remove stale temporary files. Yields {'deleted': [...], 'removed_tmp': [...]}."""
    d = Path(directory)
    check_writable(d, what)
    if fresh and d.is_dir() and _contents(d) and not is_clamps(d):
        raise InputError(what, "", f"{str(d)!r}, which has no {MARKER} marker (clamp did not make it)",
                         "a directory clamp made, for --fresh to delete", "remove it yourself, or choose another --out")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(what, "", f"{str(d)!r}, which cannot be created ({e.strerror})",
                         "a directory clamp can create") from None
    key = os.path.realpath(d)
    info: dict = {"deleted": [], "removed_tmp": []}
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        fd = _acquire(d, what)
        _held[key] = (fd, 1)
    try:
        if _held[key][1] == 1:
            if fresh:
                for p in _contents(d):
                    info["deleted"].append(str(p))
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            if not is_clamps(d):
                atomic_write(d / MARKER, json.dumps({"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                     "by": "clamp"}) + "\n")
            info["removed_tmp"] = [str(p) for p in remove_stale(d)]
        yield info
    finally:
        fd, depth = _held[key]
        if depth == 1:
            del _held[key]
            os.close(fd)                       # releases the flock
        else:
            _held[key] = (fd, depth - 1)


@contextmanager
def claimed(directory: str | os.PathLike, kind: str, fresh: bool, check: Callable[[], None],
            emit: Callable[[dict], None]) -> Iterator[dict]:
    """Take a directory for a run or suite: `check()` (what is there fits what will be written) before
    anything is touched, then hold the writer lock (--fresh first deletes what clamp made there, and
    `emit` says so), and check again under the lock."""
    directory = Path(directory)
    if not fresh:
        check_writable(directory)
        check()                                            # refused before anything is touched
    with writer(directory, kind, fresh=fresh) as held:
        if held["deleted"]:
            emit({"event": "deleted", "dir": str(directory), "files": held["deleted"]})
        check()
        yield held


def _acquire(d: Path, what: str) -> int:
    fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = ""
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            pass
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise InputError(what, "", f"{str(d)!r}, which another clamp process is writing"
                             + (f" ({holder})" if holder else ""),
                             "one writer per directory", "wait for it to finish, or choose another --out") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
    return fd


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
    path.parent.mkdir(exist_ok=True)
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
