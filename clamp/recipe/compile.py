"""Recipe → Plan: every intervention resolved to concrete sites, heads and step windows.

Sits between spec (a checked Recipe) and hooks/train (which apply the Plan). A Plan is
data: `plan.text()` is the timeline `clamp plan` prints and train writes to plan.txt;
`plan.active(step)` says which edits act at a step (half-open windows);
`plan.boundaries` are the steps where that set changes, so the trainer reconfigures
hooks only there. Two edits that write the same site and head at the same step are
rejected here with the recipe location of the second.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..measures import head_column
from ..names import sites as S
from ..names.errors import format_path
from ..values.base import VALUES, ValueSource
from .types import Intervention, Recipe, Selection

MetricsOf = Callable[[Path], list]            # a run directory → its metrics rows


@dataclass(frozen=True)
class Edit:
    """One intervention acting on one concrete site (or parameter)."""

    index: int                      # position in its list (recipe.interventions or a probe)
    kind: str                       # clamp | ablate | freeze | preserve
    label: str                      # the target as written (subcircuit or site name)
    site: S.Site                    # concrete name + heads
    source: ValueSource | None = field(compare=False)
    windows: tuple[tuple[int, int], ...] = ()
    preserve: tuple[str, ...] = ()  # on a clamp/ablate: later sites taken from a reference pass
    origin: tuple = ()              # key path of the intervention, e.g. ('interventions', 2)
    note: str = ""                  # how heads were chosen, for the plan
    name: str = ""                  # the intervention's name (the subcircuit it acts on)
    state: str = ""                 # freezes: what happens to the optimizer state (hold | accumulate)

    def active(self, step: int) -> bool:
        return any(a <= step < b for a, b in self.windows)

    def describe(self) -> str:
        what = {"clamp": f"clamp to {self.source!r}", "ablate": f"ablate ({self.source!r})",
                "freeze": f"freeze ({self.state} optimizer state)",
                "preserve": "preserve (reference pass)"}[self.kind]
        if self.preserve:
            what += f", preserving later {' and '.join(self.preserve)}"
        via = f"  (via {self.label})" if self.label != str(self.site) else ""
        if self.name and self.name != self.label:
            via += f"  as {self.name}"
        note = f"  [{self.note}]" if self.note else ""
        return f"{what:<34} {self.site}{via}{note}"


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
            lines.append(f"  {i:>2} {format_path(e.origin)} {e.describe()}")
            lines.append(f"     |{''.join(bar)}| steps {wins}")
        lines.append("segments:")
        for a, b, act in self.segments():
            names = ", ".join(f"#{self.edits.index(e)}" for e in act) or "none"
            lines.append(f"  [{a:>6}, {b:>6})  active: {names}")
        return "\n".join(lines)


def compile_plan(recipe: Recipe, seed: int | None = None, probe: str | None = None,
                 measured: dict | None = None, metrics_of: MetricsOf | None = None) -> Plan:
    """The Plan of a recipe (for one seed, where heads are chosen from a run per seed); with
    `probe`, the plan of that probe: the training interventions plus the probe's, and heads of
    `select.run: self` subcircuits chosen from `measured` (a metrics row).

    Pure: it reads no file. Heads chosen from another run's measures (`select.run: DIR`) need
    `metrics_of(DIR)`, that run's metrics rows (store.run_metrics gives them from disk)."""
    shape = recipe.shape()
    seed = recipe.seeds[0] if seed is None else seed
    items: list[tuple[tuple, Intervention]] = [(("interventions", i), iv)
                                               for i, iv in enumerate(recipe.interventions)]
    if probe is not None:
        items += [(("probes", probe, i), iv) for i, iv in enumerate(recipe.probes[probe])]
    edits: list[Edit] = []
    for path, iv in items:
        new = _resolve(path, iv, recipe, shape, seed, measured, metrics_of)
        edits.extend(new)
        for e in new:
            if e.preserve:
                edits.extend(_preserved(e, shape))
    _check_conflicts(edits, recipe)
    _check_needs(edits, recipe, shape)
    return Plan(recipe.train.steps, tuple(edits), shape)


def _resolve(path: tuple, iv: Intervention, recipe: Recipe, shape: S.ModelShape, seed: int,
             measured: dict | None, metrics_of: MetricsOf | None) -> list[Edit]:
    want = "parameter" if iv.kind == "freeze" else "activation"
    note = ""
    if iv.target in recipe.subcircuits:
        sc = recipe.subcircuits[iv.target]
        names = sc.params if iv.kind == "freeze" else sc.sites
        if sc.select is not None:
            heads, note = select_heads(sc.select, shape, seed, measured, recipe, iv.target, metrics_of)
            names = tuple(S.head_name(n, heads) for n in names) if heads else ()
    else:
        names = (iv.target,)
    source = VALUES[iv.source](iv.options) if iv.source else None
    merged: dict[str, set[int] | None] = {}
    infos: dict[str, S.SiteInfo] = {}
    for n in names:
        for s in S.expand(n, shape, want):
            infos[s.name] = s.info
            have = merged.get(s.name, set())
            merged[s.name] = None if s.heads is None or have is None else have | set(s.heads)
    return [Edit(path[-1], iv.kind, iv.target,
                 S.Site(name, None if hs is None else tuple(sorted(hs)), infos[name]),
                 source, iv.windows, iv.preserve, path, note, iv.name,
                 iv.options.optimizer_state if iv.kind == "freeze" else "") for name, hs in merged.items()]


def _preserved(e: Edit, shape: S.ModelShape) -> list[Edit]:
    """The sites a clamp/ablation with `preserve` takes from the reference pass: the attention
    patterns and/or values of every later layer (all heads)."""
    first = 0 if e.site.info.layer is None else e.site.info.layer + 1
    if e.site.name in ("hook_logits", "ln_final.hook_normalized"):
        first = shape.layers
    leaf = {"patterns": "hook_pattern", "values": "hook_v"}
    out = []
    infos = {i.name: i for i in S.catalogue(shape)}
    for L in range(first, shape.layers):
        for what in e.preserve:
            name = f"blocks.{L}.attn.{leaf[what]}"
            out.append(Edit(e.index, "preserve", f"{what} for {format_path(e.origin)}",
                            S.Site(name, None, infos[name]), None, e.windows, (), e.origin))
    return out


def select_heads(sel: Selection, shape: S.ModelShape, seed: int, measured: dict | None, recipe: Recipe,
                 name: str, metrics_of: MetricsOf | None = None) -> tuple[tuple[int, ...], str]:
    """Heads of `sel.layer` chosen by a per-head measure: from a metrics row (run: self) or a run."""
    cols = [head_column(sel.by, sel.layer, h) for h in range(shape.heads)]
    where = ("subcircuits", name, "select")
    if sel.run == "self":
        if measured is None:
            raise recipe.source.error(where + ("run",), "'self' outside a probe",
                                      "a run directory (heads must be known before training)")
        row = measured
        origin = f"measured at step {row.get('step')}"
    else:
        run = Path(sel.run.replace("{seed}", str(seed)))
        if metrics_of is None:
            raise recipe.source.error(where + ("run",), repr(str(run)), "a plan compiled with the run's metrics "
                                      "(compile_plan(..., metrics_of=clamp.store.run_metrics))")
        rows = metrics_of(run)
        if not rows:
            raise recipe.source.error(where + ("run",), repr(str(run)), "a run directory with metrics.jsonl")
        found = rows[-1] if sel.at < 0 else next((r for r in rows if r["step"] == sel.at), None)
        if found is None:
            raise recipe.source.error(where + ("at",), str(sel.at), "an evaluation step of that run")
        row = found
        origin = f"{run} step {row['step']}"
    if any(c not in row for c in cols):
        raise recipe.source.error(where + ("by",), repr(sel.by), f"a measure the run recorded (add {sel.by} "
                                  "to its measure list)")
    vals = [float(row[c]) for c in cols]
    order = sorted(range(shape.heads), key=lambda h: (-vals[h], h))
    if sel.top:
        chosen = order[:sel.top]
    elif sel.bottom:
        chosen = order[::-1][:sel.bottom]
    elif sel.above is not None:
        chosen = [h for h in range(shape.heads) if vals[h] > sel.above]
    else:
        below = sel.below
        assert below is not None                          # spec.py requires one of top/bottom/above/below
        chosen = [h for h in range(shape.heads) if vals[h] < below]
    if sel.complement:
        chosen = [h for h in range(shape.heads) if h not in chosen]
    heads = tuple(sorted(chosen))
    shown = ", ".join(f"{h}: {vals[h]:.3g}" for h in heads) or "none"
    return heads, f"heads {list(heads)} = {sel.describe()} ({origin}; {shown})"


def _overlap(w1, w2) -> tuple[int, int] | None:
    for a, b in w1:
        for c, d in w2:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                return lo, hi
    return None


def _check_conflicts(edits: list[Edit], recipe: Recipe) -> None:
    writers = [e for e in edits if e.kind not in ("freeze", "preserve")]
    freezes = [e for e in edits if e.kind == "freeze"]
    pairs = [(a, b) for j, b in enumerate(writers) for a in writers[:j]]
    pairs += [(a, b) for j, b in enumerate(freezes) for a in freezes[:j] if a.state != b.state]
    for a, b in pairs:
        if a.site.name != b.site.name or a.origin == b.origin:
            continue
        ha: set[int | None] | None = set(a.site.heads) if a.site.heads is not None else None
        hb: set[int | None] | None = set(b.site.heads) if b.site.heads is not None else None
        common = (ha & hb) if ha is not None and hb is not None else (ha or hb or {None})
        if not common:
            continue
        when = _overlap(a.windows, b.windows)
        if when is None:
            continue
        heads = sorted(h for h in common if h is not None)
        where = S.head_name(a.site.name, tuple(heads) if heads else None)
        if b.kind == "freeze":
            raise recipe.source.error(
                b.origin, f"a freeze of {where} with optimizer_state {b.state} during steps [{when[0]}, {when[1]})",
                "one optimizer_state per parameter slice at any step",
                f"{format_path(a.origin)} freezes it there with optimizer_state {a.state}")
        raise recipe.source.error(
            b.origin, f"a second write to {where} during steps [{when[0]}, {when[1]})",
            "at most one clamp or ablation per site and head at any step",
            f"{format_path(a.origin)} already writes it there; give them disjoint steps or heads")


def _check_needs(edits: list[Edit], recipe: Recipe, shape: S.ModelShape) -> None:
    """A source that reads another site must read one computed earlier in the forward pass; the
    logits may not be replaced wholesale by a value without gradient (nothing could learn)."""
    order = {i.name: i.order for i in S.catalogue(shape)}
    for e in edits:
        if e.source is None:
            continue
        if e.site.name == "hook_logits" and e.source.detached and e.origin[0] == "interventions":
            raise recipe.source.error(
                e.origin, f"hook_logits replaced by {e.source!r} during training",
                "a site upstream of the logits, or a value source with gradient (e.g. perfect_copy)",
                "every logit would carry no gradient, so the loss could not train anything; "
                "use it in probes: to evaluate instead")
        for need in e.source.needs(e.site, shape):
            if need not in order:
                raise recipe.source.error(e.origin, repr(need),
                                          "a site of this model for the value source to read")
            if order[e.site.name] and order[need] >= order[e.site.name] and need != e.site.name:   # raw: unordered
                raise recipe.source.error(
                    e.origin, f"{e.source.name} at {e.site} reading {need}",
                    f"a site computed before {e.site.name} in the forward pass")


def check_plans(recipe: Recipe, metrics_of: MetricsOf | None = None) -> None:
    """InputError, located, when the training plan or a probe's plan cannot be compiled (two writes to
    one site and head in one window, a source reading a later site, ...): so a run or suite is refused
    before it starts, not each run at its first step. Probes whose heads are chosen at each evaluation
    (`select.run: self`) are checked when they run."""
    compile_plan(recipe, metrics_of=metrics_of)
    for name, ivs in recipe.probes.items():
        scs = [recipe.subcircuits.get(iv.target) for iv in ivs]
        if not any(sc is not None and sc.select is not None and sc.select.run == "self" for sc in scs):
            compile_plan(recipe, probe=name, metrics_of=metrics_of)


def probe_text(recipe: Recipe, name: str, seed: int | None = None, metrics_of: MetricsOf | None = None) -> str:
    """What a probe does at each evaluation (heads chosen at each evaluation are described)."""
    lines = [f"probe {name!r} (evaluation only; columns <measure>@{name}):"]
    for i, iv in enumerate(recipe.probes[name]):
        sc = recipe.subcircuits.get(iv.target)
        what = f"{iv.kind} {iv.target}" + (f" to {iv.source}" if iv.kind == "clamp" else
                                           f" ({iv.source})" if iv.kind == "ablate" else "")
        if iv.preserve:
            what += f", preserving later {' and '.join(iv.preserve)}"
        if sc is not None and sc.select is not None and sc.select.run == "self":
            what += f"; heads: {sc.select.describe()}"
        else:
            plan = compile_plan(recipe, seed, probe=name, metrics_of=metrics_of)
            heads = [str(e.site) + (f" [{e.note}]" if e.note else "") for e in plan.edits
                     if e.origin == ("probes", name, i)]
            what += "; " + ", ".join(heads)
        lines.append(f"  probes.{name}[{i}] {what}")
    return "\n".join(lines)
