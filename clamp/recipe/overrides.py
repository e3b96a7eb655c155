"""Overrides: one way to change recipe data at a key path, for every place that does it.

Recipe layer, under spec.py and suite.py. Three things change recipe data before it is
checked, and all go through `set_path`:

    extends: base.yaml        the file's keys merged over the base recipe's (`deep_merge`)
    --set train.lr=1e-3       one value at a key path (`apply_override`)
    a suite variant           {train.lr: 1e-3, task: {labels: 15}}: key paths, nested mappings
                              merged key by key (`merge_overrides`)

A key path is dotted keys with list indices (`interventions.0.steps`, schema.parse_key_path).
Missing mappings on the way are created; a list index must exist; a path through a number or
a string is refused. Every key path set is recorded in the Source (`src.overrides`), so an error
in an overridden value names the override, not the file line it replaced.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ..names.errors import InputError, format_path, show
from ..names.yamlio import Source, load_yaml, parse_key_path

# (key path reached, what was found there, what was expected) → the located error to raise
Fail = Callable[[tuple, str, str], InputError]

# mappings whose keys are names (metric columns, subcircuits, probes), never key paths: a column
# such as `max(prev_token_score/blocks.0.attn.hook_pattern[*])` is one key, dots and all
NAMED_KEYS = {("phases",), ("train", "stop"), ("subcircuits",), ("probes",)}


def set_path(data: dict, parts: list, value: Any, fail: Fail, merge: bool = False,
             label: Callable[[Any], str] | None = None, at: tuple = ()) -> list[tuple]:
    """Set `data[parts[0]][parts[1]]... = value` (a deep copy); with `merge`, a non-empty mapping
    value merges into a mapping already there, its keys being key paths too (except in the
    mappings of NAMED_KEYS, whose keys are names). `at`: where `data` is in the recipe. Returns the
    key paths set."""
    node: Any = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, dict):
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        elif isinstance(node, list):
            if not (isinstance(p, int) and p < len(node)):
                raise fail(tuple(parts[:i + 1]), "no such list item", "an index into an existing list")
            node = node[p]
        else:
            raise fail(tuple(parts[:i]), show(node), "a mapping to set a key in")
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise fail(tuple(parts), "no such list item", f"an index below {len(node)}")
    elif not isinstance(node, dict):
        raise fail(tuple(parts[:-1]), show(node), "a mapping to set a key in")
    elif merge and isinstance(value, dict) and value and isinstance(node.get(last), dict):
        done: list[tuple] = []
        here = at + tuple(parts)
        for k, v in value.items():
            sub = [k] if here in NAMED_KEYS else parse_key_path(str(k), label(k) if label else str(k))

            def inner(pp: tuple, found: str, expected: str, _p: tuple = tuple(parts)) -> InputError:
                return fail(_p + pp, found, expected)
            done += [tuple(parts) + p for p in set_path(node[last], sub, v, inner, True, label, here)]
        return done
    node[last] = copy.deepcopy(value)
    return [tuple(parts)]


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key; anything else (lists, and an explicit empty mapping {}) replaces."""
    if isinstance(base, dict) and isinstance(over, dict) and over:
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return copy.deepcopy(over)


def parse_override(text: str, label: str | None = None) -> tuple[list, Any]:
    """'train.lr=1e-3' → (['train', 'lr'], 0.001); the value is read as YAML (plain YAML only:
    tags and oversized values are refused as in files; text that is not YAML is a string).
    `label`: where it was written (default: the --set flag)."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise InputError(label or "--set", "", show(text), "key.path=value, e.g. --set train.lr=1e-3")
    label = label or f"--set {text}"
    parts = parse_key_path(key.strip(), label)
    if not raw.strip():
        return parts, None
    try:
        value, _ = load_yaml(raw, label)
    except InputError as e:
        if e.found != "text that is not valid YAML":
            raise
        value = raw
    return parts, value


def labelled(item) -> tuple[str, str | None]:
    """An override and its label: a plain string is a `--set` flag's."""
    return (item[0], item[1]) if isinstance(item, tuple) else (item, None)


def apply_override(data: dict, text: str, src: Source, label: str | None = None) -> None:
    """Apply one `key.path=value` to recipe data: a `--set` flag, or (with `label`, its file:line) an
    entry of a suite's `set:`. Errors in the value name where it was written."""
    parts, value = parse_override(text, label)
    label = label or f"--set {text}"

    def fail(path: tuple, found: str, expected: str) -> InputError:
        return InputError(label, format_path(path), found, expected)
    for p in set_path(data, parts, value, fail):
        _replaced(src, p, label)


def merge_overrides(data: dict, overrides: dict, where: tuple, suite_src: Source, run_src: Source) -> None:
    """Apply a suite variant's (or grid point's) overrides, located at `where` in the suite file."""
    for key, value in overrides.items():
        at = where + (key,)
        label = f"{suite_src.where(at)}: {format_path(where[:1] if where[0] == 'grid' else where)}"

        def fail(path: tuple, found: str, expected: str, _at=at) -> InputError:
            return suite_src.error(_at, f"{format_path(path)}: {found}" if path else found,
                                   expected + " (a key path into the base recipe)")
        def same(k: Any, _label: str = label) -> str:
            return _label
        for p in set_path(data, parse_key_path(str(key), label), value, fail, merge=True, label=same):
            _replaced(run_src, p, label)


def _replaced(src: Source, path: tuple, label: str) -> None:
    """The value at `path` now comes from `label`: what the file held below it is gone, so no error
    below it may be located at the file's old lines."""
    n = len(path)
    for table in (src.lines, src.overrides):
        for p in [p for p in table if len(p) > n and p[:n] == path]:
            del table[p]
    src.overrides[path] = label
