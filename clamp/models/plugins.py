"""Plug-ins: the one door through which user code enters clamp, and when it is opened.

Model layer (below tasks' registries' users: spec.py and suite.py import plug-ins through here,
usermodel.py resolves model factories in them). A plug-in is a `.py` file, a package directory or
an installed module's dotted name; importing it runs its code, with the user's rights.

Who decides that code runs:

- a recipe or suite file the user names (`clamp run R`, `clamp bench S`, `clamp plan R`, ...) and
  `--plugin`: imported, as running a script is (the user chose to run it);
- a run or suite directory (`recipe.yaml`, `suite.yaml` that clamp wrote, read by report, graph,
  explain, probe, or by a graft or selection that names another run): its plug-ins are imported
  only when the same file or module is already imported (the user named it), or when the user
  trusts directories (`--trust-plugins`, `clamp.trust_plugins()`). Otherwise each is recorded as
  not imported (`not_imported()`), and what needs it fails with a line that says so
  (`PluginsNotImported`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..names.errors import InputError, show
from ..names.registry import NameTaken

LOADED: dict[str, Any] = {}      # plug-in modules imported from files (name → module), for Ray (by value)
_trusted = False                 # --trust-plugins: import what run directories list
_reading: ContextVar[str | None] = ContextVar("clamp_reading_directory", default=None)
_skipped: dict[str, str] = {}    # plug-in entry → the directory file that listed it, not imported


def is_path(entry: str) -> bool:
    """A plug-in entry that is a file or directory path (else an installed module's dotted name)."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def plugin_name(entry: str) -> str:
    """The module name a plug-in entry is imported under."""
    if entry.endswith(".py"):
        return os.path.splitext(os.path.basename(entry))[0]
    return os.path.basename(os.path.normpath(entry)) if is_path(entry) else entry


def trust_plugins(on: bool = True) -> None:
    """Import the plug-ins that run and suite directories list (they are code: trust their author)."""
    global _trusted
    _trusted = on


def forget_not_imported() -> None:
    """Start a new record of what was not imported (each CLI command reports its own)."""
    _skipped.clear()


def not_imported() -> dict[str, str]:
    """Plug-ins a directory listed that were not imported (entry → the file that listed it)."""
    return dict(_skipped)


class PluginsNotImported(InputError):
    """A directory's recipe needs a plug-in that was not imported (it is code nobody vouched for)."""


@contextmanager
def reading_directory(listed_in: str) -> Iterator[None]:
    """Within: plug-ins are what `listed_in` (a recipe.yaml or suite.yaml clamp wrote) lists, imported
    only if trusted or already imported. An error that the missing plug-ins explain says so."""
    token = _reading.set(listed_in)
    before = set(_skipped)
    try:
        yield
    except InputError as e:
        new = [k for k in _skipped if k not in before and _skipped[k] == listed_in] or \
            [k for k, v in _skipped.items() if v == listed_in]
        if not new or isinstance(e, PluginsNotImported):
            raise
        raise PluginsNotImported(
            listed_in, "plugins", f"plug-in(s) not imported: {', '.join(_short(n) for n in new)} (plug-ins are code)",
            "--trust-plugins to import what this directory lists, or --plugin with the file you know",
            f"without it: {e.found} at {e.path or e.where}") from None
    finally:
        _reading.reset(token)


def _short(entry: str) -> str:
    return os.path.basename(os.path.normpath(entry)) if is_path(entry) else entry


def _already(entry: str) -> Any:
    """The module of a plug-in entry if this process has imported exactly it, else None."""
    name = plugin_name(entry)
    have = sys.modules.get(name)
    if have is None:
        return None
    if not is_path(entry):
        return have
    init = os.path.join(entry, "__init__.py") if os.path.isdir(entry) else entry
    same = os.path.realpath(getattr(have, "__file__", "") or "") == os.path.realpath(init)
    return have if same else None


def load_plugin(entry: str) -> Any:
    """Import one plug-in (an absolute path to a .py file or package directory, or a dotted name);
    InputError (unlocated) when it cannot be. Importing the same file twice returns the first import.
    While a directory is read (`reading_directory`) and it is not trusted, a plug-in not imported yet
    is recorded and skipped (None)."""
    listed_in = _reading.get()
    if listed_in is not None and not _trusted:
        have = _already(entry)
        if have is None:
            _skipped.setdefault(entry, listed_in)
        return have
    return _import_module(entry) if not is_path(entry) else _import_file(entry)


def _import_module(entry: str) -> Any:
    """An installed module by its dotted name."""
    try:
        return importlib.import_module(entry)
    except NameTaken as e:
        raise InputError("", "", show(entry), "a plug-in whose names are free", str(e)) from None
    except (ImportError, ValueError, TypeError) as e:      # ValueError: '' or a relative name
        raise InputError("", "", show(entry), "a .py file or package directory (relative to the recipe), "
                         "or an importable module", str(e)[:120]) from None
    except Exception as e:  # noqa: BLE001 - a plug-in's own failure is bad input, said in one line
        raise InputError("", "", show(entry), "a plug-in that imports",
                         f"importing it raised {type(e).__name__}: {str(e)[:160]}") from None


def _import_file(entry: str) -> Any:
    """A .py file, or a package directory, under the module name of its stem."""
    name = plugin_name(entry)
    path = entry
    if os.path.isdir(path):
        init = os.path.join(path, "__init__.py")
        if not os.path.isfile(init):
            raise InputError("", "", show(entry), "a package directory with __init__.py, or a .py file",
                             f"{entry} is a directory without __init__.py")
    elif not os.path.exists(path):
        raise InputError("", "", show(entry), "a .py file or a package directory that exists",
                         f"there is no {show(os.path.abspath(path))} (a recipe's plug-in paths are relative to the "
                         "recipe, --plugin's to the current directory)")
    elif not path.endswith(".py") or not os.path.isfile(path):
        raise InputError("", "", show(entry), "a .py file or a package directory (a plug-in is Python code)",
                         "name the module's .py file")
    else:
        init = path
    have = sys.modules.get(name)
    if have is not None:
        if os.path.realpath(getattr(have, "__file__", "") or "") == os.path.realpath(init):
            return have
        raise InputError("", "", show(entry), f"a plug-in whose name is free ('{name}' is already imported "
                         f"from {getattr(have, '__file__', None) or 'built-ins'})", "rename the file")
    if not name.isidentifier():
        raise InputError("", "", show(entry), "a plug-in whose file name is a Python module name",
                         "rename it to letters, digits and _ (e.g. my_plugin.py)")
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[path] if os.path.isdir(path) else None)
    if spec is None or spec.loader is None:
        raise InputError("", "", show(entry), "a .py file or a package directory Python can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    LOADED[name] = module
    try:
        spec.loader.exec_module(module)
    except NameTaken as e:
        del sys.modules[name], LOADED[name]
        raise InputError("", "", show(entry), "a plug-in whose names are free", str(e)) from None
    except Exception as e:  # noqa: BLE001 - a plug-in's own failure is bad input, said in one line
        del sys.modules[name], LOADED[name]
        raise InputError("", "", show(entry), "a plug-in that imports",
                         f"importing it raised {type(e).__name__}: {str(e)[:160]}") from None
    return module
