"""Which directories are clamp's, and what in them clamp wrote.

Store layer (store.py's atomic writes call it; the run and suite code hold directories through
it). clamp changes only what it created:

- A directory clamp made holds two files written together: the marker `.clamp` (JSON: who made it,
  the kind of directory, a random id, when, and a checksum of those) and the manifest
  `.clamp.manifest` (its first line repeats the id; then one line per path, relative to the
  directory, that clamp created there). A directory is clamp's only when the marker parses, its
  checksum holds and the manifest carries the same id: never because of what its other files are
  called, and never because a file named `.clamp` exists.
- clamp writes into a directory only if it is new, empty, or clamp's (`check_writable`); inside a
  directory it holds it overwrites or deletes only paths its manifest lists (`guard`, `remove`);
  `--fresh` deletes exactly the paths the manifest lists (a sub-directory with a marker of its own
  by its own manifest) and says what it deleted and what it kept.
- One writer per directory: `writer(dir)` holds an OS lock (flock on `.clamp.lock`) while a
  process writes there; a second writer gets a one-line error (exit 2). Locks are re-entrant
  within a process and the children it forks, which write into the same directories.
- Temporary files of a killed writer (`.NAME.tmp<pid>`, NAME a path clamp recorded) are removed
  when the next writer takes the lock.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..names.errors import InputError

MARKER = ".clamp"
MANIFEST = ".clamp.manifest"
LOCK = ".clamp.lock"
OWN_FILES = (MARKER, MANIFEST, LOCK)
FORMAT = 2
_HEADER = "clamp manifest "
# what a directory of each kind may be taken for: a run's directory is never a suite's, and back
COMPATIBLE = {"run": {"run", "seed run"}, "seed run": {"run", "seed run"}, "suite": {"suite"},
              "graph": {"graph", "suite", "run", "seed run"}}
_TMP = re.compile(r"^\.(.+)\.tmp\d+$")


@dataclass(frozen=True)
class Marker:
    kind: str
    id: str
    created: str


def _check(kind: str, ident: str, created: str) -> str:
    return hashlib.sha256(f"clamp|{FORMAT}|{kind}|{ident}|{created}".encode()).hexdigest()[:16]


def _read_small(path: Path, limit: int = 4096) -> str | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def marker(directory: str | os.PathLike) -> Marker | None:
    """The directory's verified marker, or None when clamp did not make it."""
    return _verify(Path(directory))[0]


def _verify(d: Path) -> tuple[Marker | None, str]:
    """(marker, '') when `d` is clamp's; (None, why not) otherwise."""
    text = _read_small(d / MARKER)
    if text is None:
        return None, (f"has no {MARKER} marker" if not (d / MARKER).exists()
                      else f"its {MARKER} is not a file clamp wrote")
    try:
        m = json.loads(text)
    except ValueError:
        return None, f"its {MARKER} is not a marker clamp wrote"
    if not isinstance(m, dict) or m.get("by") != "clamp":
        return None, f"its {MARKER} is not a marker clamp wrote"
    if "id" not in m and set(m) == {"kind", "created", "by"}:
        return None, f"its {MARKER} is an older clamp's marker, without an id"
    kind, ident, created = m.get("kind"), m.get("id"), m.get("created")
    if not (isinstance(kind, str) and kind in COMPATIBLE and isinstance(ident, str)
            and re.fullmatch(r"[0-9a-f]{32}", ident) and isinstance(created, str)
            and m.get("format") == FORMAT and m.get("check") == _check(kind, ident, created)):
        return None, f"its {MARKER} does not verify (not written by this clamp)"
    head = _read_small(d / MANIFEST, 200)
    if head is None or head.split("\n", 1)[0] != _HEADER + ident:
        return None, f"its {MANIFEST} is missing or belongs to another marker"
    return Marker(kind, ident, created), ""


def manifest(directory: str | os.PathLike) -> set[str]:
    """The paths (relative, '/'-separated) clamp recorded as created in a directory it made."""
    d = Path(directory)
    out: set[str] = set()
    try:
        with open(d / MANIFEST, encoding="utf-8") as f:
            next(f, None)
            for line in f:
                try:
                    rel = json.loads(line)
                except ValueError:
                    break                                  # a line cut by a kill ends the list
                if isinstance(rel, str) and _safe_rel(rel):
                    out.add(rel)
    except (OSError, UnicodeDecodeError):
        pass
    return out


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts) \
        and parts[0] not in OWN_FILES


def _contents(d: Path) -> list[Path]:
    return list(d.iterdir())


def _describe(d: Path) -> str:
    names = sorted(p.name for p in _contents(d))
    return ", ".join(repr(n) if not n.isprintable() else n for n in names[:3]) + (", ..." if len(names) > 3 else "")


def check_writable(directory: str | os.PathLike, what: str = "--out", kind: str | None = None) -> None:
    """InputError unless clamp may write into `directory`: missing (under a writable directory), empty,
    or clamp's (and, with `kind`, made for that kind of output). Reads only."""
    d = Path(directory)
    if "\x00" in str(d):
        raise InputError(what, "", repr(str(d))[:80], "a directory path without NUL bytes")
    if d.is_symlink() and not d.exists():
        raise InputError(what, "", f"{str(d)!r}, a broken symbolic link", "a directory for clamp's files")
    if d.exists() and not d.is_dir():
        raise InputError(what, "", f"{str(d)!r}, which is not a directory", "a directory for clamp's files")
    if d.is_dir():
        if not os.access(d, os.W_OK | os.X_OK):
            raise InputError(what, "", f"{str(d)!r}, which is not writable", "a directory clamp can write into")
        if not _contents(d):
            return
        m, why = _verify(d)
        where = str(d) if what == str(d) else f"{what} {d}"
        if m is None:
            raise InputError(where, "", f"a directory clamp did not make ({why}; it holds {_describe(d)})",
                             "a new or empty directory, or one clamp made", "clamp changes nothing in it")
        if kind is not None and m.kind not in COMPATIBLE[kind]:
            raise InputError(where, "", f"a {m.kind} directory", f"a directory for a {kind}",
                             "choose another --out" if kind != "run" else
                             "choose another --out (a recipe's default is runs/<its name>; set name: to change it)")
        return
    parent = d.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(what, "", f"{str(d)!r}, which cannot be created ({str(parent)!r} is not a writable "
                         "directory)", "a directory clamp can create")


# ---------------------------------------------------------------------------------------
# Holding a directory


class _Held:
    def __init__(self, fd: int, recorded: set[str]):
        self.fd, self.depth, self.recorded = fd, 1, recorded


_held: dict[str, _Held] = {}          # this process's held directories: real path → lock and manifest


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _holder(path: Path) -> tuple[str, str] | None:
    """(held directory's key, path relative to it) for the innermost held directory containing `path`."""
    p = os.path.join(_key(path.parent), path.name)
    best = None
    for k in _held:
        if p.startswith(k + os.sep) and (best is None or len(k) > len(best)):
            best = k
    return (best, os.path.relpath(p, best).replace(os.sep, "/")) if best else None


def _claim_new(d: Path, kind: str) -> None:
    """Write the manifest, then the marker, into a new or empty directory (each created exclusively:
    of two processes claiming the same empty directory, one wins and the other finds it clamp's)."""
    ident = uuid.uuid4().hex
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(d / MANIFEST, flags, 0o644)
    except FileExistsError:
        for _ in range(50):                               # another clamp is claiming it: wait for its marker
            if marker(d) is not None:
                return
            time.sleep(0.05)
        raise InputError(str(d), "", "a directory another process is claiming", "a directory for clamp's files",
                         "choose another --out") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_HEADER + ident + "\n")
    body = {"by": "clamp", "format": FORMAT, "kind": kind, "id": ident, "created": created,
            "check": _check(kind, ident, created)}
    fd = os.open(d / MARKER, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(body) + "\n")


def _mkdir(d: Path, what: str) -> list[Path]:
    """Create `d` and its missing parents; the ones created, outermost first."""
    made = []
    p = d
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    made.reverse()
    for p in made:
        try:
            p.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(what, "", f"{str(d)!r}, which cannot be created ({e.strerror})",
                             "a directory clamp can create") from None
    return made


@contextmanager
def writer(directory: str | os.PathLike, kind: str | None, fresh: bool = False,
           what: str = "--out") -> Iterator[dict]:
    """Hold `directory` for writing: create it (recorded in the directory that holds it), claim it for
    clamp as a `kind` directory if it is new or empty (kind None: a directory of any kind clamp made,
    or a new run directory), take its lock, with `fresh` delete what clamp wrote there, and remove
    stale temporary files. Yields {'deleted': [...], 'kept': [...], 'removed_tmp': [...]} (paths)."""
    d = Path(directory)
    check_writable(d, what, kind)
    for p in _mkdir(d, what):
        record(p)
    key = _key(d)
    info: dict = {"deleted": [], "kept": [], "removed_tmp": []}
    if key in _held:
        _held[key].depth += 1
    else:
        if not _contents(d):
            _claim_new(d, kind or "run")
        check_writable(d, what, kind)                     # what is there now is clamp's (a race lost is refused)
        _held[key] = _Held(_acquire(d, what), manifest(d))
    h = _held[key]
    try:
        if h.depth == 1:
            if fresh:
                info["deleted"], info["kept"] = _clear(d, h)
            info["removed_tmp"] = [str(p) for p in _remove_stale(d, h.recorded)]
        yield info
    finally:
        h.depth -= 1
        if h.depth == 0:
            del _held[key]
            os.close(h.fd)                                 # releases the flock


@contextmanager
def claimed(directory: str | os.PathLike, kind: str, fresh: bool, check: Callable[[], None],
            emit: Callable[[dict], None]) -> Iterator[dict]:
    """Take a directory for a run or suite: `check()` (what is there fits what will be written) before
    anything is touched unless `fresh`, then hold it (--fresh first deletes what clamp wrote there,
    and `emit` says what it deleted and kept), and check again under the lock."""
    directory = Path(directory)
    check_writable(directory, kind=kind)
    if not fresh:
        check()                                            # refused before anything is touched
    with writer(directory, kind, fresh=fresh) as held:
        if held["deleted"] or held["kept"]:
            emit({"event": "deleted", "dir": str(directory), "files": held["deleted"], "kept": held["kept"]})
        check()
        yield held


def _acquire(d: Path, what: str) -> int:
    fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = ""
        with suppress(OSError):
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
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
# What clamp wrote


def record(path: str | os.PathLike) -> None:
    """Note in the manifest of the directory holding `path` that clamp creates it (called before the
    file or directory is made, so a kill never leaves one of clamp's files unlisted)."""
    path = Path(path)
    got = _holder(path)
    if got is None:
        return
    key, rel = got
    h = _held[key]
    if rel in h.recorded or not _safe_rel(rel):
        return
    fd = os.open(os.path.join(key, MANIFEST), os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    try:
        os.write(fd, (json.dumps(rel) + "\n").encode("utf-8"))   # one write: appends never interleave
    finally:
        os.close(fd)
    h.recorded.add(rel)


def guard(path: str | os.PathLike) -> None:
    """InputError when `path` exists inside a directory clamp holds but clamp did not write it;
    otherwise record it (clamp is about to write it)."""
    path = Path(path)
    got = _holder(path)
    if got is None:
        return
    key, rel = got
    if rel not in _held[key].recorded and (path.exists() or path.is_symlink()) and rel not in manifest(key):
        raise InputError(str(path), "", "a file clamp did not write", "a path clamp may write (its own)",
                         "move the file away; clamp never overwrites a file it did not create")
    record(path)


def remove(path: str | os.PathLike) -> bool:
    """Delete a file clamp wrote (nothing when it is missing, or when clamp did not write it)."""
    path = Path(path)
    got = _holder(path)
    if got is not None and got[1] not in _held[got[0]].recorded and got[1] not in manifest(got[0]):
        return False
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def make_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, each directory created recorded in the directory that holds it."""
    path = Path(path)
    for p in _mkdir(path, str(path)):
        record(p)
    return path


def _remove_stale(d: Path, recorded: set[str]) -> list[Path]:
    """Temporary files of a killed writer for paths clamp recorded, in `d` and its checkpoints/."""
    out = []
    for sub in ("", "checkpoints"):
        base = d / sub if sub else d
        if not base.is_dir() or base.is_symlink():
            continue
        for p in base.iterdir():
            m = _TMP.match(p.name)
            rel = f"{sub}/{m.group(1)}" if m and sub else (m.group(1) if m else None)
            if rel in recorded and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                out.append(p)
    return out


def _inside(p: Path, d: Path) -> bool:
    """`p` lies in `d` itself, not behind a symbolic link that leads elsewhere."""
    return os.path.realpath(p.parent).startswith(os.path.realpath(d) + os.sep) or \
        os.path.realpath(p.parent) == os.path.realpath(d)


def _clear(d: Path, h: _Held) -> tuple[list[str], list[str]]:
    """--fresh: delete every path the manifest lists, deepest first (a sub-directory with a marker of
    its own by its own manifest); empty directories clamp made go too. Returns (deleted, kept)."""
    deleted: list[str] = []
    kept_inside: list[str] = []
    manifest_before = h.recorded | manifest(d)
    for rel in sorted(manifest_before, key=lambda r: (-r.count("/"), r)):
        p = d / rel
        if not _inside(p, d):
            continue
        if p.is_symlink() or p.is_file():
            p.unlink()
            deleted.append(str(p))
        elif p.is_dir():
            if marker(p) is not None:
                got, kept = _clear_nested(p)
                deleted += got
                kept_inside += kept
            if p.is_dir() and not _contents(p):
                p.rmdir()
                deleted.append(str(p))
    with open(d / MANIFEST, encoding="utf-8") as f:
        head = f.readline()
    left = sorted(r for r in manifest_before if (d / r).exists() and _inside(d / r, d))   # directories kept
    tmp = d / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(head + "".join(json.dumps(r) + "\n" for r in left), encoding="utf-8")
    os.replace(tmp, d / MANIFEST)
    h.recorded.clear()
    h.recorded.update(left)
    kept = _unlisted(d, manifest_before) + kept_inside
    return deleted, kept


def _unlisted(d: Path, recorded: set[str], sub: str = "") -> list[str]:
    """What is left in `d` that clamp did not write, walking into the directories clamp made that have
    no marker of their own (those with one report their own)."""
    out = []
    base = d / sub if sub else d
    for p in sorted(_contents(base)):
        rel = f"{sub}/{p.name}" if sub else p.name
        if not sub and p.name in OWN_FILES:
            continue
        if rel in recorded and p.is_dir() and not p.is_symlink():
            if marker(p) is None:
                out += _unlisted(d, recorded, rel)
        elif rel not in recorded:
            out.append(str(p))
    return out


def _clear_nested(d: Path) -> tuple[list[str], list[str]]:
    fd = _acquire(d, str(d))                               # nobody may be writing there
    try:
        h = _Held(fd, manifest(d))
        deleted, kept = _clear(d, h)
        if not kept:
            for name in (MARKER, MANIFEST):
                (d / name).unlink(missing_ok=True)
    finally:
        os.close(fd)
    if [p.name for p in _contents(d)] == [LOCK]:
        (d / LOCK).unlink()
    return deleted, kept
