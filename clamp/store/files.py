"""The mechanics of clamp's files: atomic writes, JSON that stays JSON, append-only metrics.

Store layer (rundir.py builds every run and suite path on these; owned.py decides what clamp may
touch):

- every file is written atomically (a temporary `.NAME.tmp<pid>` beside it, then a rename), so a
  kill leaves the old file or the new one, never half of one; metrics.jsonl is the one
  append-only file (a line at a time; a line cut by a kill is dropped when read back);
- JSON is always valid JSON: a NaN or infinite number is written as null and named, with what it
  was, under "non_finite";
- inside a directory clamp holds, every path is recorded in its manifest before it is written,
  and a file clamp did not write is never replaced (owned.guard).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .owned import guard

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
