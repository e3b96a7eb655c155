"""What a recipe's runs will write, known before they run: its metric columns, checked against
every rule that names one.

Recipe layer (pure; no torch, no files). `produced(recipe)` lists the columns a run of the recipe
writes at an evaluation (names from columns.py); `check(recipe)` refuses, with the usual located
one-line error, what would otherwise only fail after training: a measure the task cannot produce,
a phase rule, stop rule or `select.by` that names a column no measure produces, a value source's
`rows:` that is not a position role of the task. Tasks that do not declare what their batches
carry (`roles`, `induction_keys`, `has_repeated_segments` left None) are not refused on those grounds.
"""
from __future__ import annotations

from ..measures import MEASURES, head_column, head_site, per_head
from ..names import columns as C
from ..names.errors import did_you_mean, show
from ..names.sites import catalogue
from ..tasks import TASKS
from .types import Intervention, Recipe


def unavailable(recipe: Recipe, measure: str) -> str:
    """Why the recipe's task cannot produce `measure` ('' when it can, or might)."""
    cls = MEASURES.get(measure)
    if cls is None:
        return ""
    shape = recipe.shape()
    have = {i.name for i in catalogue(shape)}
    missing = [s for s in cls.sites(shape) + cls.sites(shape, cls.repeats) + cls.sites(shape, cls.reads)
               if s not in have]
    if missing:
        return f"this model has no site {missing[0]} (its family or adapter names none)"
    return cls.unavailable(TASKS[recipe.task.name], recipe.task.options, shape)


def evaluators(recipe: Recipe) -> tuple[str, ...]:
    have = TASKS[recipe.task.name].evaluators_of(recipe.task.options)
    return tuple(e for e in have if not recipe.train.evaluators or e in recipe.train.evaluators)


def produced(recipe: Recipe) -> set[str]:
    """Every metric column a run of `recipe` writes (probe columns included)."""
    s = recipe.shape()
    evs = evaluators(recipe)
    out: set[str] = set()
    for m in recipe.measure:
        if m in MEASURES and not unavailable(recipe, m):
            out.update(MEASURES[m].columns(s, evs))
    scored = ("loss", "accuracy") if TASKS[recipe.task.name].accuracy else ("loss",)
    for probe in recipe.probes:
        out.update(C.probe_column(c, probe) for c in {C.evaluator_column(m, e) for m in scored for e in evs})
    return out


def measured_phases(recipe: Recipe) -> dict:
    """The recipe's phase rules without those on columns it does not produce (for task defaults)."""
    have = produced(recipe)
    return {col: rules for col, rules in recipe.phases.items() if C.matching(col, have)}


def check(recipe: Recipe) -> None:
    """InputError (located in the recipe) for what a run of `recipe` could not produce or use."""
    src = recipe.source
    for i, m in enumerate(recipe.measure):
        why = unavailable(recipe, m)
        if why:
            raise src.error(("measure", i), show(m), f"a measure this task and model can produce ({why})")
    have = produced(recipe)
    for col in recipe.phases:
        _column(recipe, have, col, ("phases", col), "phase rule")
    for col in recipe.train.stop:
        _column(recipe, have, col, ("train", "stop", col), "stop rule")
    for name, sc in recipe.subcircuits.items():
        sel = sc.select
        if sel is not None and sel.run == "self":
            col = head_column(sel.by, sel.layer, 0)
            if col not in have:
                why = unavailable(recipe, sel.by)
                raise src.error(("subcircuits", name, "select", "by"), show(sel.by),
                                "a per-head measure this recipe measures (select.run: self reads its own columns)",
                                why or f"add {sel.by} to measure:")
    roles = TASKS[recipe.task.name].roles
    if roles is not None:
        items: list[tuple[tuple, Intervention]] = [(("interventions", i), iv)
                                                   for i, iv in enumerate(recipe.interventions)]
        items += [(("probes", p, i), iv) for p, ivs in recipe.probes.items() for i, iv in enumerate(ivs)]
        for path, iv in items:
            rows = getattr(iv.options, "rows", None)
            if isinstance(rows, str) and rows != "all" and rows not in roles:
                raise src.error(path + ("rows",), show(rows),
                                f"'all' or a position role of {recipe.task.name}: " + ", ".join(roles),
                                did_you_mean(rows, roles))


def _column(recipe, have: set[str], col: str, path: tuple, what: str) -> None:
    if C.matching(col, have):
        return
    agg = C.AGGREGATE.match(col)
    base = agg.group(2) if agg else col
    measure = base.split("/", 1)[0].split("@", 1)[0]
    if measure in MEASURES and measure not in recipe.measure:
        hint = unavailable(recipe, measure) or f"add {measure} to measure:"
    elif per_head(measure) and "/" not in base:
        hint = (f"{measure} is per head: {head_column(measure, 0, 0)}, or over heads "
                f"max({measure}/{head_site(measure, 0).replace('0', '*', 1)}[*])")
    else:
        plain = sorted(c for c in have if "/blocks." not in c and "composition" not in c)
        hint = did_you_mean(col, have) or ("columns: " + ", ".join(plain[:8]) if plain else "")
    raise recipe.source.error(path, "a column no measure of this recipe produces",
                              f"a metric column of this recipe ({what}s read them)", hint)
