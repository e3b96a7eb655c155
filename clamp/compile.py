"""Recipe → Plan: every intervention resolved to concrete sites, heads and step windows.

Sits between spec (a checked Recipe) and hooks/train (which apply the Plan). A Plan is
data: `plan.text()` is the timeline `clamp plan` prints and train writes to plan.txt;
`plan.active(step)` says which edits act at a step (half-open windows);
`plan.boundaries` are the steps where that set changes, so the trainer reconfigures
hooks only there. Two edits that write the same site and head at the same step are
rejected here with the recipe location of the second.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from . import sites as S
from .spec import Intervention, Recipe
from .values import VALUES, ValueSource


@dataclass(frozen=True)
class Edit:
    """One intervention acting on one concrete site (or parameter)."""

    index: int                      # position in recipe.interventions
    kind: str                       # clamp | ablate | freeze
    label: str                      # the target as written (subcircuit or site name)
    site: S.Site                    # concrete name + heads
    source: ValueSource | None = field(compare=False)
    windows: tuple[tuple[int, int], ...] = ()

    def active(self, step: int) -> bool:
        return any(a <= step < b for a, b in self.windows)

    def describe(self) -> str:
        what = {"clamp": f"clamp to {self.source!r}", "ablate": f"ablate ({self.source!r})",
                "freeze": "freeze"}[self.kind]
        via = f"  (via {self.label})" if self.label != str(self.site) else ""
        return f"{what:<34} {self.site}{via}"


@dataclass(frozen=True)
class Plan:
    steps: int
    edits: tuple[Edit, ...]
    shape: S.ModelShape

    @property
    def boundaries(self) -> tuple[int, ...]:
        return tuple(sorted({x for e in self.edits for w in e.windows for x in w} | {0}))

    def active(self, step: int) -> tuple[Edit, ...]:
        return tuple(e for e in self.edits if e.active(step))

    def segments(self) -> list[tuple[int, int, tuple[Edit, ...]]]:
        """Consecutive [start, end) step ranges with the same active edits."""
        cuts = sorted(set(self.boundaries) | {self.steps})
        cuts = [c for c in cuts if c <= self.steps]
        return [(a, b, self.active(a)) for a, b in zip(cuts, cuts[1:])]

    def text(self, width: int = 40) -> str:
        """The human-readable timeline (what `clamp plan` prints)."""
        lines = [f"plan: {len(self.edits)} edit(s) over {self.steps} steps (windows are half-open [start, end))"]
        if not self.edits:
            lines.append("  no interventions: plain training")
        for i, e in enumerate(self.edits):
            bar = [" "] * width
            for a, b in e.windows:
                lo, hi = int(a / self.steps * width), max(int(a / self.steps * width) + 1,
                                                          int(round(b / self.steps * width)))
                for k in range(lo, min(hi, width)):
                    bar[k] = "#"
            wins = ", ".join(f"[{a}, {b})" for a, b in e.windows)
            lines.append(f"  {i:>2} interventions[{e.index}] {e.describe()}")
            lines.append(f"     |{''.join(bar)}| steps {wins}")
        lines.append("segments:")
        for a, b, act in self.segments():
            names = ", ".join(f"#{self.edits.index(e)}" for e in act) or "none"
            lines.append(f"  [{a:>6}, {b:>6})  active: {names}")
        return "\n".join(lines)


def compile_plan(recipe: Recipe) -> Plan:
    shape = recipe.shape()
    edits: list[Edit] = []
    for i, iv in enumerate(recipe.interventions):
        edits.extend(_resolve(i, iv, recipe, shape))
    _check_conflicts(edits, recipe)
    _check_needs(edits, recipe, shape)
    return Plan(recipe.train.steps, tuple(edits), shape)


def _resolve(i: int, iv: Intervention, recipe: Recipe, shape: S.ModelShape) -> list[Edit]:
    want = "parameter" if iv.kind == "freeze" else "activation"
    if iv.target in recipe.subcircuits:
        sc = recipe.subcircuits[iv.target]
        names = sc.params if iv.kind == "freeze" else sc.sites
    else:
        names = (iv.target,)
    source = VALUES[iv.source](iv.options) if iv.source else None
    merged: dict[str, set[int] | None] = {}
    infos: dict[str, S.SiteInfo] = {}
    for n in names:
        for s in S.expand(n, shape, want):
            infos[s.name] = s.info
            if s.heads is None or merged.get(s.name, ()) is None:
                merged[s.name] = None
            else:
                merged.setdefault(s.name, set()).update(s.heads)
    return [Edit(i, iv.kind, iv.target,
                 S.Site(name, None if hs is None else tuple(sorted(hs)), infos[name]),
                 source, iv.windows) for name, hs in merged.items()]


def _overlap(w1, w2) -> tuple[int, int] | None:
    for a, b in w1:
        for c, d in w2:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                return lo, hi
    return None


def _check_conflicts(edits: list[Edit], recipe: Recipe) -> None:
    writers = [e for e in edits if e.kind != "freeze"]
    for j, b in enumerate(writers):
        for a in writers[:j]:
            if a.site.name != b.site.name or a.index == b.index:
                continue
            ha = set(a.site.heads) if a.site.heads is not None else None
            hb = set(b.site.heads) if b.site.heads is not None else None
            common = (ha & hb) if ha is not None and hb is not None else (ha or hb or {None})
            if not common:
                continue
            when = _overlap(a.windows, b.windows)
            if when is None:
                continue
            heads = sorted(h for h in common if h is not None)
            where = S.head_name(a.site.name, tuple(heads) if heads else None)
            path = ("interventions", b.index)
            raise recipe.source.error(
                path, f"a second write to {where} during steps [{when[0]}, {when[1]})",
                "at most one clamp or ablation per site and head at any step",
                f"interventions[{a.index}] already writes it there; give them disjoint steps or heads")


def _check_needs(edits: list[Edit], recipe: Recipe, shape: S.ModelShape) -> None:
    """A source that reads another site must read one computed earlier in the forward pass."""
    order = {i.name: i.order for i in S.catalogue(shape)}
    for e in edits:
        if e.source is None:
            continue
        for need in e.source.needs(e.site):
            if need not in order:
                raise recipe.source.error(("interventions", e.index), repr(need),
                                          "a site of this model for the value source to read")
            if order[need] >= order[e.site.name] and need != e.site.name:
                raise recipe.source.error(
                    ("interventions", e.index), f"{e.source.name} at {e.site} reading {need}",
                    f"a site computed before {e.site.name} in the forward pass")
