"""Typed frozen dataclasses built from plain data, with errors that point at the input.

Names layer, over yamlio.py (which reads YAML and keeps the line of every key path); under
spec.py (recipes) and suite.py (suites); tasks and value sources declare their options as
dataclasses that this module checks. `build` turns plain data into a typed value or dataclass,
raising `InputError` with file:line, key path, what was found, what was expected and a
did-you-mean; `unbuild` is its inverse.

Field metadata understood by `build`:
    check:  callable(value) -> None | str     (a str is the 'expected' text of an error)
    doc:    one line shown by `clamp sites`/docs
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import Any, Literal, Union

from .errors import InputError, did_you_mean, show
from .yamlio import Path, Source

# ---------------------------------------------------------------------------------------
# Checks for field metadata


def positive(v) -> str | None:
    return None if v > 0 else "a number > 0"


def non_negative(v) -> str | None:
    return None if v >= 0 else "a number >= 0"


def between(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v):
        return None if lo <= v <= hi else f"a number in [{lo}, {hi}]"
    return check


def opt(default: Any = dataclasses.MISSING, *, check=None, doc: str = "", factory=None, path: bool = False,
        keywords: tuple[str, ...] = ()):
    """A dataclass field with a check and a one-line doc. `path=True`: a file or directory path, made
    absolute relative to the file that wrote it (strings in `keywords`, e.g. 'self', are kept)."""
    meta = {"check": check, "doc": doc, "path": path, "keywords": keywords}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------
# Building typed values


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(describe(args[0]))}"
        return f"a list of {len(args)} {_plural(describe(args[0]))}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def _plural(words: str) -> str:
    """'an integer' → 'integers', 'a list of 2 integers' → 'lists of 2 integers'."""
    words = words.removeprefix("a ").removeprefix("an ")
    if words.startswith("list of "):
        return "lists" + words[4:]
    return words if words.endswith("s") else words + "s"


def build(tp: Any, value: Any, path: Path, src: Source) -> Any:
    """Check `value` against type `tp` and convert it (lists → tuples, mappings → dataclasses)."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, src)       # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    builder = _BUILDERS.get(types.UnionType if origin is Union else origin) or _SCALARS.get(tp)
    if builder is None:
        raise TypeError(f"schema: unsupported type {tp!r}")
    return builder(tp, value, path, src)


def _union(tp: Any, value: Any, path: Path, src: Source) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:                      # X | None with a value: X's own error, at its own key
        return build(options[0], value, path, src)
    errors = []
    for a in options:
        try:
            return build(a, value, path, src)
        except InputError as e:
            errors.append(e)
    raise src.error(path, show(value), describe(tp), errors[0].hint if len(errors) == 1 else "")


def _literal(tp: Any, value: Any, path: Path, src: Source) -> Any:
    choices = typing.get_args(tp)
    if value in choices and type(value) is type(choices[choices.index(value)]):
        return value
    raise src.error(path, show(value), describe(tp),
                    did_you_mean(str(value), [str(c) for c in choices]) if isinstance(value, str) else "")


def _tuple(tp: Any, value: Any, path: Path, src: Source) -> tuple:
    args = typing.get_args(tp)
    many = len(args) == 2 and args[1] is Ellipsis
    if not isinstance(value, list):
        if not (many and isinstance(value, (str, int, float))):
            raise src.error(path, show(value), describe(tp))
        value = [value]                                    # a single item stands for a list of one
    if many:
        return tuple(build(args[0], v, path + (i,), src) for i, v in enumerate(value))
    if len(value) != len(args):
        raise src.error(path, show(value), f"a list of {len(args)} items")
    return tuple(build(a, v, path + (i,), src) for i, (a, v) in enumerate(zip(args, value)))


def _dict(tp: Any, value: Any, path: Path, src: Source) -> dict:
    kt, vt = typing.get_args(tp)
    if not isinstance(value, dict):
        raise src.error(path, show(value), "a mapping")
    return {build(kt, k, path, src): build(vt, v, path + (k,), src) for k, v in value.items()}


def _bool(tp: Any, value: Any, path: Path, src: Source) -> bool:
    if isinstance(value, bool):
        return value
    raise src.error(path, show(value), "true or false")


MAX_INT = 2**53          # integers a recipe holds are counts, sizes, steps and seeds: all far below this


def _int(tp: Any, value: Any, path: Path, src: Source) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= MAX_INT:
            raise src.error(path, show(value), "an integer below 2^53 (9,007,199,254,740,992)")
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    raise src.error(path, show(value), "an integer")


def _float(tp: Any, value: Any, path: Path, src: Source) -> float:
    out = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            out = float(value)
    elif isinstance(value, str) and len(value) < 40:
        with contextlib.suppress(ValueError):
            out = float(value)                             # YAML 1.1 reads 1e-4 (no dot) as a string
    if out is not None and math.isfinite(out):
        return out
    raise src.error(path, show(value), "a finite number" if out is not None else "a number")


def _str(tp: Any, value: Any, path: Path, src: Source) -> str:
    if isinstance(value, str):
        return value
    raise src.error(path, show(value), "a string")


_BUILDERS: dict[Any, Callable] = {types.UnionType: _union, Literal: _literal, tuple: _tuple, dict: _dict}
_SCALARS: dict[Any, Callable] = {bool: _bool, int: _int, float: _float, str: _str}


def build_dataclass(cls: type, value: Any, path: Path, src: Source, *, skip: Sequence[str] = ()) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise src.error(path, show(value), describe(cls))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    hints = typing.get_type_hints(cls)
    src.check_keys(value, list(fields), path)
    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise src.error(path, f"no key {name!r}", f"{name}: {describe(hints[name])}")
            continue
        v = build(hints[name], value[name], path + (name,), src)
        if f.metadata.get("path") and isinstance(v, str) and v and v not in f.metadata.get("keywords", ()):
            if "\x00" in v:
                raise src.error(path + (name,), show(v), "a path without NUL bytes")
            v = src.resolve(path + (name,), v)
        check = f.metadata.get("check")
        if check is not None and v is not None:
            problem = check(v)
            if problem:
                raise src.error(path + (name,), show(value[name]), problem)
        kwargs[name] = v
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        problem = validate()
        if problem:
            key, expected, hint = (problem + ("",))[:3] if isinstance(problem, tuple) else ("", problem, "")
            raise src.error(path + ((key,) if key else ()), show(value.get(key) if key else value), expected, hint)
    return obj


def unbuild(obj: Any) -> Any:
    """Dataclasses → plain data (tuples → lists) for YAML/JSON; inverse of `build`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: unbuild(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [unbuild(v) for v in obj]
    if isinstance(obj, dict):
        return {k: unbuild(v) for k, v in obj.items()}
    return obj

