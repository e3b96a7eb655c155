"""Named registries (tasks, value sources): one rule for a name that is already taken.

Names layer (no torch). A built-in or a plug-in registers a class under its `name`; registering a
different class under a taken name is refused with both named, unless the caller asks for the
replacement (`replace=True`). Re-registering the same class, or the same module's class again (a
module imported twice), is not a collision.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class NameTaken(ValueError):
    """A registration under a name another class holds."""


def where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def register(table: dict[str, Any], what: str, name: str, obj: Any, replace: bool = False) -> None:
    old = table.get(name)
    same = old is obj or (old is not None and where(old) == where(obj))
    if old is not None and not same and not replace:
        raise NameTaken(f"{what} name {name!r} is taken by {where(old)}, not replaced by {where(obj)}: "
                        "rename it, or register with replace=True")
    table[name] = obj


def decorator(table: dict[str, Any], what: str) -> Callable:
    """`@register_x` or `@register_x(replace=True)` (or `register_x(cls)`), registering under `cls.name`."""
    def register_x(cls: Any = None, *, replace: bool = False) -> Any:
        def add(c: Any) -> Any:
            register(table, what, c.name, c, replace)
            return c
        return add if cls is None else add(cls)
    return register_x
