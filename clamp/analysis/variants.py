"""A suite's variants as the subcircuit graph sees them: what each trains on and what it does.

Analysis layer, under graph.py. A *variant* is one recipe run over seeds; its *condition* is what it
trains on (model, task, optimizer, lr, batch, as canonical JSON); its *signature* is its set of
interventions, each named by the subcircuit it acts on. `load_variants` reads suite directories
(results and recipes, nothing rerun); `behaviours_of` lists the phase changes a recipe times and
`behaviours` the ones a set of variants can be compared on (refusing mixtures that say nothing).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..names import columns as C
from ..names.errors import InputError, did_you_mean
from ..names.schema import unbuild
from ..recipe.types import Recipe, recipe_to_dict
from .results import load_results


@dataclass
class Variant:
    key: str                       # '<suite>/<variant>[grid]'
    suite: str
    name: str
    recipe: Recipe
    condition: str                 # canonical text of what it trains on
    signature: frozenset           # of (subcircuit, kind, source)
    rows: list                     # results rows (one per seed)
    suite_dir: Path                # the suite directory its runs are in (store.rundir.SuiteDir)

    @property
    def labels(self) -> frozenset:
        return frozenset(s[0] for s in self.signature)

    def times(self, behaviour: str) -> dict[int, tuple[float, bool]]:
        """seed → (phase-change step, censored); never-changed runs count as their length."""
        col = C.behaviour_crossing(behaviour)
        out = {}
        for r in self.rows:
            if r.get("status") != "ok":
                continue
            v = r.get(col)
            out[int(r["seed"])] = (float(r.get("steps") or 0), True) if v in (None, "") else (float(v), False)
        return out


def condition_key(r: Recipe) -> str:
    d = recipe_to_dict(r)
    t = d["train"]
    return json.dumps({"model": d["model"], "task": d["task"],
                       "train": {k: t[k] for k in ("optimizer", "lr", "batch", "betas", "weight_decay")}},
                      sort_keys=True)


def condition_name(key: str, ref: str) -> str:
    """What differs from the reference condition, as key.path=value (or 'reference')."""
    a, b = json.loads(key), json.loads(ref)
    diffs = []
    for sec in a:
        for k, v in a[sec].items():
            if b.get(sec, {}).get(k) != v:
                diffs.append(f"{sec}.{k}={v}")
    return ",".join(diffs) or "reference"


def signature(r: Recipe) -> frozenset:
    """(subcircuit, kind, source) per intervention; the source carries its options where it has any
    and its windows where they are not the whole run, so a windowed clamp or another strength is a
    different intervention."""
    def source(iv) -> str:
        opts = unbuild(iv.options) if iv.options is not None else {}
        text = (iv.source or "") + (f"({', '.join(f'{k}={v}' for k, v in sorted(opts.items()))})" if opts else "")
        if tuple(map(tuple, iv.windows)) != ((0, r.train.steps),):
            text += "@" + ",".join(f"[{a},{b})" for a, b in iv.windows)
        return text
    return frozenset((iv.name or iv.target, iv.kind, source(iv)) for iv in r.interventions)


def load_variants(dirs: list[str | os.PathLike]) -> list[Variant]:
    out = []
    for d in dirs:
        res = load_results(d)
        for (vname, point), recipe in res.suite.recipes.items():
            grid = ",".join(f"{k}={v}" for k, v in point)
            rows = [r for r in res.rows if r["variant"] == vname and r["grid"] == grid]
            label = vname + (f"[{grid}]" if grid else "")
            out.append(Variant(f"{res.suite.name}/{label}", res.suite.name, label, recipe, condition_key(recipe),
                               signature(recipe), rows, Path(d)))
    return out


def behaviours_of(r: Recipe) -> list[str]:
    """The behaviours a recipe times: its threshold phase rules, as `phase:<column>:<rule>`."""
    return [C.behaviour(col, rule) for col, rules in r.phases.items() for rule in rules if rule in ("below", "above")]


def behaviours(variants: list[Variant], behaviour: str | None) -> list[str]:
    """The behaviours every variant measures; refused when suites of different tasks or phase rules
    are combined without saying which behaviour to use."""
    sets = {v.key: behaviours_of(v.recipe) for v in variants}
    if behaviour is not None:
        b = behaviour if behaviour.startswith("phase:") else C.behaviour(*behaviour.rsplit(":", 1))
        lacking = [k for k, bs in sets.items() if b not in bs]
        if lacking:
            have = sorted({x for bs in sets.values() for x in bs})
            raise InputError("--behaviour", "", f"{behaviour!r}, which {len(lacking)} variant(s) do not time "
                             f"(e.g. {lacking[0]})", "a threshold phase rule every variant has",
                             did_you_mean(b, have))
        return [b]
    tasks = sorted({v.recipe.task.name for v in variants})
    if len(tasks) > 1:
        by = {t: sorted({v.suite for v in variants if v.recipe.task.name == t}) for t in tasks}
        raise InputError("graph", "", "suites of different tasks (" + "; ".join(f"{t}: {', '.join(s)}"
                         for t, s in by.items()) + ")", "suites of one task, or --behaviour COLUMN:RULE naming "
                         "the phase change to compare", "their phase rules time different things")
    distinct = {tuple(bs) for bs in sets.values()}
    if len(distinct) > 1:
        ex = sorted(sets.items(), key=lambda kv: len(kv[1]))
        raise InputError("graph", "", "variants with different phase rules "
                         f"({ex[0][0]}: {', '.join(ex[0][1]) or 'none'}; "
                         f"{ex[-1][0]}: {', '.join(ex[-1][1])})", "one set of phase rules, or --behaviour COLUMN:RULE",
                         "otherwise some runs would be judged on a column they never measured")
    out = next(iter(distinct))
    if not out:
        raise InputError("graph", "", "runs without a threshold phase rule (below/above)",
                         "phases: {COLUMN: {below: x}} in the recipes, to time a phase change")
    return list(out)
