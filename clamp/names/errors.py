"""Errors a user can act on.

Every stage of the flow (spec → compile → train → phases → graph → report) raises
`InputError` for bad input. Its message is one line:

    recipes/x.yaml:12: interventions[0].clamp: found 'prev_tokn'; expected a subcircuit
    name or a site; did you mean 'prev_token'?

The CLI prints that line and exits 2; nothing else of clamp prints. `suggest` gives the
did-you-mean used everywhere.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def suggest(found: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """Close matches of `found` among `candidates`, best first (empty when none is close)."""
    cands = sorted(set(map(str, candidates)))
    return difflib.get_close_matches(str(found), cands, n=n, cutoff=0.6)


def format_path(path: Sequence[str | int]) -> str:
    """('interventions', 0, 'clamp') → 'interventions[0].clamp'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = str(part)
            plain = part.replace("_", "a").replace("-", "a").replace("*", "a").isalnum()
            out += ("." if out else "") + (part if plain else repr(part))
    return out or "(top level)"


def show(value: object) -> str:
    """A short, quoted rendering of a found value for messages."""
    text = repr(value) if isinstance(value, str) else _plain(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind(value: object) -> str:
    """What a value is, without its content (for whole files that are not what was expected: their
    text is not echoed back)."""
    if isinstance(value, str):
        return f"text ({len(value)} characters), not a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s), not a mapping"
    return f"{_plain(value) if isinstance(value, (bool, int, float)) or value is None else type(value).__name__}, " \
        "not a mapping"


def _plain(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping {" + ", ".join(str(k) for k in value) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) if not isinstance(v, str) else repr(v) for v in value) + "]"
    return str(value)


@dataclass
class InputError(Exception):
    """Bad input (recipe, suite, site name, argument), located and explained in one line."""

    where: str          # 'file:line', 'file', '--set', 'argument', ...
    path: str           # key path inside the input, e.g. 'interventions[0].steps'
    found: str          # what was there (already rendered)
    expected: str       # what would have been accepted
    hint: str = ""      # a did-you-mean or a fix

    def __str__(self) -> str:
        # one line of bounded length, whatever the input held (newlines, control characters, a
        # 10,000-character key): each part is shortened in the middle until the whole fits. The
        # hint and the explanation give way first, then the key path and what was found, the location
        # (file:line) last, so that a message still starts with where the mistake is
        parts = [_printable(x) for x in (self.where, self.path, self.found, self.expected, self.hint)]
        caps = [(4, 80), (3, 120), (1, 60), (2, 70), (4, 30), (3, 60), (1, 40), (2, 50), (0, 160), (0, 50)]
        for i, cap in caps:
            if len(_join(parts)) <= MAX_MESSAGE:
                break
            parts[i] = _middle(parts[i], cap, tail=i == 0)    # a location keeps its file name and line
        return _join(parts)

    def at(self, where: str) -> InputError:
        """The same error, located at `where` if it was not located yet."""
        if not self.where:
            self.where = where
        return self


MAX_MESSAGE = 300          # characters in one error line


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _middle(text: str, cap: int, tail: bool = False) -> str:
    head = cap // 4 if tail else cap * 2 // 3
    return text if len(text) <= cap else text[:head - 2] + "..." + text[-(cap - head - 1):]


def _join(parts: list[str]) -> str:
    where, path, found, expected, hint = parts
    return ((f"{where}: " if where else "") + (f"{path}: " if path else "") + f"found {found}; expected {expected}"
            + (f"; {hint}" if hint else ""))


def did_you_mean(found: str, candidates: Iterable[str]) -> str:
    best = suggest(found, candidates)
    return f"did you mean {best[0]!r}?" if best else ""


class RunError(Exception):
    """A run failed for a reason that is not bad input (NaN loss, a crash in a worker)."""
