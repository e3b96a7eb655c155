"""YAML with line numbers, and typed frozen dataclasses built from it.

Sits under spec.py (recipes) and bench.py (suites); tasks and value sources declare their
options as dataclasses that this module checks. `load_yaml` keeps the line of every key
path; `build` turns plain data into a dataclass, raising `InputError` with file:line, key
path, what was found, what was expected and a did-you-mean.

Field metadata understood by `build`:
    check:  callable(value) -> None | str     (a str is the 'expected' text of an error)
    doc:    one line shown by `clamp sites`/docs
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import yaml

from .errors import InputError, did_you_mean, format_path, show

Path = tuple  # of str | int


# ---------------------------------------------------------------------------------------
# Where things are


@dataclass
class Source:
    """Maps key paths of one input to 'file:line' (or to a fixed label like '--set')."""

    file: str = ""
    lines: dict = field(default_factory=dict)          # Path -> 1-based line
    overrides: dict = field(default_factory=dict)      # Path -> label ('--set train.lr=…')

    def where(self, path: Sequence) -> str:
        path = tuple(path)
        for n in range(len(path), -1, -1):
            if path[:n] in self.overrides:
                return self.overrides[path[:n]]
            if path[:n] in self.lines:
                return f"{self.file}:{self.lines[path[:n]]}" if self.file else f"line {self.lines[path[:n]]}"
        return self.file

    def error(self, path: Sequence, found: str, expected: str, hint: str = "") -> InputError:
        return InputError(self.where(path), format_path(path), found, expected, hint)


_SITE_WITH_HEADS = re.compile(r"[A-Za-z_*][\w*]*(?:\.[\w*]+)*\[[0-9,:* ]*\]")


def quote_site_names(text: str) -> str:
    """Quote unquoted names like blocks.0.attn.hook_pattern[2] so they parse inside [...] lists.

    In YAML a flow list `[a[2], b]` is a syntax error; researchers write site lists that way,
    so such names are quoted first. Quoted text and comments are left alone; line numbers
    do not change.
    """
    out = []
    for line in text.split("\n"):
        i, n, buf, quote = 0, len(line), [], ""
        while i < n:
            c = line[i]
            if quote:
                buf.append(c)
                if c == quote:
                    quote = ""
                i += 1
                continue
            if c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or line[i - 1] in " \t"):
                buf.append(line[i:])
                break
            elif i == 0 or line[i - 1] in " \t[,{":          # a whole YAML token only
                m = _SITE_WITH_HEADS.match(line, i)
                if m and "." in m.group(0) and (m.end() == n or line[m.end()] in " \t,]}#"):
                    buf.append("'" + m.group(0) + "'")
                    i = m.end()
                    continue
            buf.append(c)
            i += 1
        out.append("".join(buf))
    return "\n".join(out)


def load_yaml_file(path: str | os.PathLike, what: str) -> tuple[Any, Source]:
    """Read and parse a YAML file; a missing or unreadable one is an InputError naming `what`
    ('a recipe file', 'a suite file', ...)."""
    path = os.fspath(path)
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(path, "", "no readable file", f"{what} (YAML)", e.strerror or "") from None
    return load_yaml(text, path)


def load_yaml(text: str, file: str = "") -> tuple[Any, Source]:
    """Parse YAML into plain Python data and a Source of line numbers; InputError on bad YAML."""
    try:
        node = yaml.compose(quote_site_names(text), Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{file}{line}", "", "text that is not valid YAML", "a YAML mapping",
                         str(problem)) from None
    src = Source(file=file)
    if node is None:
        return None, src
    return _convert(node, (), src), src


def _convert(node: yaml.Node, path: Path, src: Source, loader: yaml.SafeLoader | None = None) -> Any:
    loader = loader or yaml.SafeLoader("")
    src.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for knode, vnode in node.value:
            key = _convert(knode, path, src, loader)
            if isinstance(key, (list, dict)) or key is None:
                raise InputError(f"{src.file}:{knode.start_mark.line + 1}", format_path(path),
                                 "a key that is not a plain name", "keys that are names")
            key = key if isinstance(key, (int, bool)) else str(key)
            if key in out:
                raise InputError(f"{src.file}:{knode.start_mark.line + 1}", format_path(path + (key,)),
                                 f"the key {key!r} a second time", "each key once")
            src.lines[path + (key,)] = knode.start_mark.line + 1
            out[key] = _convert(vnode, path + (key,), src, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, path + (i,), src, loader) for i, v in enumerate(node.value)]
    return loader.construct_object(node)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


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


def opt(default: Any = dataclasses.MISSING, *, check=None, doc: str = "", factory=None):
    """A dataclass field with a check and a one-line doc."""
    meta = {"check": check, "doc": doc}
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
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(describe(a) for a in args)
    if origin is tuple:
        return f"a list of {describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def build(tp: Any, value: Any, path: Path, src: Source) -> Any:
    """Check `value` against type `tp` and convert it (lists → tuples, mappings → dataclasses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, src)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return build(a, value, path, src)
            except InputError as e:
                errors.append(e)
        raise src.error(path, show(value), describe(tp), errors[0].hint if len(errors) == 1 else "")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise src.error(path, show(value), describe(tp),
                        did_you_mean(str(value), [str(c) for c in choices]) if isinstance(value, str) else "")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            if isinstance(value, (str, int, float)) and len(args) == 2 and args[1] is Ellipsis:
                value = [value]          # a single item stands for a list of one
            else:
                raise src.error(path, show(value), describe(tp))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(args[0], v, path + (i,), src) for i, v in enumerate(value))
        if len(value) != len(args):
            raise src.error(path, show(value), f"a list of {len(args)} items")
        return tuple(build(a, v, path + (i,), src) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise src.error(path, show(value), "a mapping")
        return {build(kt, k, path, src): build(vt, v, path + (k,), src) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise src.error(path, show(value), "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise src.error(path, show(value), "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)      # YAML 1.1 reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        raise src.error(path, show(value), "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise src.error(path, show(value), "a string")
    raise TypeError(f"schema: unsupported type {tp!r}")


def build_dataclass(cls: type, value: Any, path: Path, src: Source, *, skip: Sequence[str] = ()) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise src.error(path, show(value), describe(cls))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    hints = typing.get_type_hints(cls)
    for key in value:
        if key not in fields:
            raise src.error(path + (key,), f"unknown key {key!r}",
                            "one of " + ", ".join(fields), did_you_mean(str(key), fields))
    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise src.error(path, f"no key {name!r}", f"{name}: {describe(hints[name])}")
            continue
        v = build(hints[name], value[name], path + (name,), src)
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


def field_docs(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type words, default, doc) per field, for documentation and `clamp` help."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        out.append((f.name, describe(hints[f.name]), default, f.metadata.get("doc", "")))
    return out
