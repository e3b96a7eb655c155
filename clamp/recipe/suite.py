"""Suites: a base recipe × named variants × grid points × seeds, with paired expectations.

Recipe layer (pure: reads the suite file and the recipes it names, runs nothing). benches.py runs
a Suite; results.py judges its expectations on the results.
A suite file (docs/design.md; every key in the README):

    name: labels                      # default: file stem
    base: ../recipes/x.yaml           # a path (relative to this file) or an inline recipe
    seeds: [0, 1, 2]                  # replaces the recipe's seeds; runs are paired by seed
    variants:                         # name → overrides (nested, or key.path form)
      baseline: {}
      copy: {recipe: copy.yaml, task.labels: 15}   # `recipe:` swaps the base for this variant
      match: {interventions: [{clamp: blocks.1.attn.hook_pattern[3], to: induction}]}
    grid: {task.labels: [5, 10, 15]}  # optional: every variant × every combination
    set: [train.steps=500]            # optional: key.path=value applied to every run last (`--set` adds)
    expect:
      - name: match is at least 5x faster
        ratio: [match, baseline]      # per seed (and grid point): value(match) / value(baseline)
        of: crossing                  # crossing | crossing:<column>:<rule> | final:<column>
        below: 0.2                    # judged on the median over seeds; a sign test is reported

Every run trains into DIR/runs/<run id>/ and is resumable (train.py); results.csv and
report.md are rewritten atomically after each run finishes.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..names import columns as C
from ..names.errors import InputError, did_you_mean, show
from ..names.schema import build
from ..names.yamlio import Source, check_name, load_yaml, load_yaml_file, read_text, safe_name
from .overrides import apply_override, labelled, merge_overrides
from .spec import MAX_SEEDS, Recipe, absolute_paths, import_plugins, parse_recipe, resolve_extends

MAX_RECIPES = 1000          # variant × grid combinations: each recipe is parsed and checked up front
MAX_RUNS = 10_000           # runs (combinations × seeds): results.csv is rewritten as each one finishes
SUITE_KEYS = ("name", "plugins", "base", "seeds", "variants", "grid", "set", "expect")
EXPECT_KEYS = ("name", "ratio", "difference", "value", "of", "below", "above", "between", "abs", "require")
QUANTITY_HELP = ("crossing, phase:<column>:<rule>[:<field>], final:<column>, or at:<step>:<column> "
                 "(a column may be max(<glob>), min(<glob>) or mean(<glob>))")


@dataclass(frozen=True)
class Operand:
    variant: str
    of: str                       # a quantity (see `quantity`)


@dataclass(frozen=True)
class Expectation:
    name: str
    kind: str                     # ratio | difference | value
    a: Operand
    b: Operand | None
    below: float | None = None
    above: float | None = None
    between: tuple[float, float] | None = None
    abs: bool = False
    require: str = "median"       # median | all

    def rule(self) -> str:
        if self.between is not None:
            return f"between {self.between[0]:g} and {self.between[1]:g}"
        return f"below {self.below:g}" if self.below is not None else f"above {self.above:g}"


@dataclass(frozen=True)
class RunSpec:
    id: str                       # directory name: variant[__k=v...]
    variant: str
    grid: tuple[tuple[str, Any], ...]
    seed: int
    recipe: Recipe = field(compare=False, repr=False)

    @property
    def point(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.grid)


@dataclass
class Suite:
    name: str
    file: str
    base: Recipe
    seeds: tuple[int, ...]
    variants: dict[str, dict]
    grid: dict[str, list]
    expect: tuple[Expectation, ...]
    recipes: dict[tuple, Recipe] = field(default_factory=dict, repr=False)   # (variant, grid) → Recipe
    data: dict = field(default_factory=dict, repr=False)                     # the suite, base inlined

    def runs(self) -> list[RunSpec]:
        out = []
        for (variant, point), recipe in self.recipes.items():
            rid = run_id(variant, point)
            for seed in self.seeds:
                out.append(RunSpec(rid, variant, point, seed, recipe))
        return out


def run_id(variant: str, point: tuple) -> str:
    """The directory name of a variant at a grid point: variant[__key=value...], a name not a path."""
    return safe_name(variant + "".join(f"__{k}={_slug(v)}" for k, v in point))


def _frozen(v: Any) -> Any:
    """A grid value as a key: lists become tuples and mappings sorted tuples of pairs."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _frozen(x)) for k, x in v.items()))
    return v


def _slug(v) -> str:
    return safe_name(str(v).replace(" ", ""))


# ---------------------------------------------------------------------------------------
# Loading


def load_suite(path: str | os.PathLike, overrides: Sequence[str | tuple[str, str]] = ()) -> Suite:
    path = os.fspath(path)
    data, src = load_yaml_file(path, "a suite file")
    return suite_from_data(data, src, overrides, os.path.splitext(os.path.basename(path))[0])


def suite_from_data(data: Any, src: Source | None = None, overrides: Sequence[str | tuple[str, str]] = (),
                    default_name: str = "suite") -> Suite:
    src = src or Source()
    if not isinstance(data, dict):
        raise src.error((), show(data), "a mapping with keys " + ", ".join(SUITE_KEYS))
    src.check_keys(data, SUITE_KEYS)
    name = check_name(data.get("name", safe_name(default_name)), ("name",), src)
    written = list(build(tuple[str, ...], data.get("set", []), ("set",), src))
    sets = [(t, f"{src.where(('set', i))}: set[{i}]") for i, t in enumerate(written)] + \
        [(t, label or f"--set {t}") for t, label in map(labelled, overrides)]
    overrides = [t for t, _ in sets]
    plugins = list(import_plugins(data.get("plugins"), src))   # imported first, and added to every recipe's
    base_data, base_src = _base(data.get("base"), src)
    if plugins:
        base_data["plugins"] = plugins + [p for p in base_data.get("plugins") or [] if p not in plugins]
    seeds = build(tuple[int, ...], data["seeds"], ("seeds",), src) if "seeds" in data else \
        build(tuple[int, ...], base_data.get("seeds", [0]), ("seeds",), base_src)      # the base's, located there
    seeds_src = src if "seeds" in data else base_src
    if not seeds or len(set(seeds)) != len(seeds):
        raise seeds_src.error(("seeds",), show(list(seeds)), "a non-empty list of distinct seeds")
    if len(seeds) > MAX_SEEDS:
        raise seeds_src.error(("seeds",), f"{len(seeds)} seeds", f"at most {MAX_SEEDS:,} seeds", "split the suite")
    variants = data.get("variants") or {"base": {}}
    if not isinstance(variants, dict):
        raise src.error(("variants",), show(variants), "a mapping of variant names to overrides")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise src.error(("grid",), show(grid), "a mapping of key.path to non-empty lists of values")
    n_recipes = len(variants) * math.prod(len(v) for v in grid.values())
    if n_recipes > MAX_RECIPES or n_recipes * len(seeds) > MAX_RUNS:
        raise src.error(("grid",) if grid else ("variants",),
                        f"{len(variants)} variant(s) × {math.prod(len(v) for v in grid.values())} grid point(s) × "
                        f"{len(seeds)} seed(s) = {n_recipes * len(seeds):,} runs",
                        f"at most {MAX_RECIPES:,} variant × grid combinations and {MAX_RUNS:,} runs in one suite (each "
                        "combination's recipe is checked before anything runs, and results.csv and report.md are "
                        "rewritten as each run finishes)", "split it into several suites")
    base_data["seeds"] = [seeds[0]]
    base_run = copy.deepcopy(base_data)
    run_src = Source(base_src.file, dict(base_src.lines), dict(base_src.overrides))
    for o, label in sets:
        apply_override(base_run, o, run_src, label)
    base = parse_recipe(base_run, run_src, name)
    recipes, inlined = _variant_recipes(name, variants, grid, seeds, sets, base_data, base_src, src, plugins)
    expect = _expectations(data.get("expect") or [], src, variants, recipes, base)
    raw = {**copy.deepcopy(data), "name": name, "base": absolute_paths(base_data, base_src), "seeds": list(seeds),
           "variants": copy.deepcopy(inlined)}
    if overrides:
        raw["set"] = overrides
    if plugins:
        raw["plugins"] = plugins
    return Suite(name, src.file, base, seeds, variants, grid, expect, recipes, raw)


def _variant_recipes(name: str, variants: dict, grid: dict, seeds: tuple, sets: list, base_data: dict,
                     base_src: Source, src: Source, plugins: list | None = None) -> tuple[dict, dict]:
    """The recipe of every variant at every grid point (overrides: variant, grid point, then --set),
    and each variant's overrides with paths made absolute (as suite.yaml keeps them)."""
    recipes: dict = {}
    inlined = {}
    for vname, ov in variants.items():
        check_name(vname, ("variants", vname), src)
        if not isinstance(ov, dict):
            raise src.error(("variants", vname), show(ov), "a mapping of overrides (may be empty: {})")
        vdata, vsrc = base_data, base_src
        inlined[vname] = absolute_paths(ov, src, ("variants", vname))
        if "recipe" in ov:
            vdata, vsrc = _base(ov["recipe"], src, ("variants", vname, "recipe"))
            inlined[vname] = {**inlined[vname], "recipe": absolute_paths(vdata, vsrc)}
            ov = {k: v for k, v in ov.items() if k != "recipe"}
        for point in itertools.product(*[[(k, v) for v in vals] for k, vals in grid.items()]):
            d = copy.deepcopy(vdata)
            d["seeds"] = [seeds[0]]
            if plugins:
                d["plugins"] = plugins + [p for p in d.get("plugins") or [] if p not in plugins]
            s = Source(vsrc.file, dict(vsrc.lines), dict(vsrc.overrides))
            merge_overrides(d, ov, ("variants", vname), src, s)
            for k, v in point:
                merge_overrides(d, {k: v}, ("grid", k), src, s)
            for o, label in sets:                    # the suite's set:, then the command line: the last word
                apply_override(d, o, s, label)
            d["name"] = safe_name(f"{name}:{vname}" + "".join(f"[{k}={_slug(v)}]" for k, v in point))
            recipes[(str(vname), tuple((k, _frozen(v)) for k, v in point))] = parse_recipe(d, s, name)
    ids: dict[str, tuple] = {}
    for (vname, point) in recipes:
        rid = run_id(vname, point)
        if rid in ids:
            raise src.error(("grid",), f"two runs with the directory name {rid!r} ({ids[rid]} and {point})",
                            "grid values that differ in more than characters a directory name cannot hold")
        ids[rid] = point
    return recipes, inlined


def _expectations(exp: Any, src: Source, variants: dict, recipes: dict, base: Recipe) -> tuple[Expectation, ...]:
    """The suite's expectations, each quantity checked against the recipes of its variant."""
    if not isinstance(exp, list):
        raise src.error(("expect",), show(exp), "a list of expectations, each like {ratio: [A, B], below: 0.2}")
    expect = tuple(_expectation(e, ("expect", i), src, variants) for i, e in enumerate(exp))
    primary = primary_crossing(base)
    for i, e in enumerate(expect):
        for j, op in enumerate((e.a, e.b)):
            if op is not None:
                where = ("expect", i, e.kind) + ((j,) if e.kind != "value" else ())
                for (vname, _point), recipe in recipes.items():
                    if vname == op.variant:
                        _check_quantity(op.of, primary, recipe, where, src)
    return expect


def _base(value, src: Source, path: tuple = ("base",)) -> tuple[dict, Source]:
    if isinstance(value, str):
        p = Path(src.file).parent / value if src.file else Path(value)
        try:
            text = read_text(p, "a recipe file")
        except InputError as e:
            raise src.error(path, show(value), f"{e.expected} (relative to the suite file)",
                            f"{e.where}: {e.found}") from None
        data, bsrc = load_yaml(text, str(p))
        if data is not None and not isinstance(data, dict):
            raise bsrc.error((), show(data), "a recipe: a mapping of recipe keys")
        data, bsrc = resolve_extends(data or {}, bsrc, str(p))
        return data, bsrc
    if isinstance(value, dict):
        n = len(path)
        lines = {k[n:]: v for k, v in src.lines.items() if k[:n] == path}
        return copy.deepcopy(value), Source(src.file, lines)
    raise src.error(path, show(value), "a recipe path or an inline recipe mapping")


def _quantity(q, path, src) -> str:
    q = build(str, q, path, src)
    parts = q.split(":")
    ok = (q == "crossing" or parts[0] == "crossing" and len(parts) == 3
          or parts[0] == "phase" and len(parts) in (3, 4)
          or parts[0] == "final" and len(parts) == 2
          or parts[0] == "at" and len(parts) == 3 and parts[1].isdecimal())
    if not ok:
        raise src.error(path, show(q), QUANTITY_HELP)
    return q


def _check_quantity(of: str, primary: str, recipe: Recipe, path: tuple, src: Source) -> None:
    """The quantity names a phase rule the variant's recipe has, or a column it produces."""
    from ..names.columns import matching
    from .outputs import produced
    parts = of.split(":")
    if of == "crossing" or parts[0] in ("crossing", "phase"):
        _, col, rule = (primary if of == "crossing" else of).split(":")[:3]
        if rule not in recipe.phases.get(col, {}):
            rules = [f"{c}:{r}" for c, rs in recipe.phases.items() for r in rs]
            raise src.error(path, f"{of!r} of a recipe without the phase rule {col}: {{{rule}: ...}}",
                            "a phase rule of the variant's recipe: " + (", ".join(rules) or "it has none"),
                            did_you_mean(f"{col}:{rule}", rules))
        return
    col = of.split(":", 1)[1] if parts[0] == "final" else of.split(":", 2)[2]
    have = produced(recipe)
    if not matching(col, have):
        raise src.error(path, f"{of!r}, a column the variant's recipe does not produce",
                        "a metric column of the variant's recipe", did_you_mean(col, have))


def _operand(v, of, path, src, variants) -> Operand:
    if isinstance(v, dict):
        extra = [k for k in v if k not in ("variant", "of")]
        if extra or "variant" not in v:
            raise src.error(path, show(v), "a variant name or {variant: NAME, of: QUANTITY}")
        name, of = v["variant"], _quantity(v.get("of", of), path + ("of",), src)
    else:
        name = v
    if not isinstance(name, str) or name not in variants:
        raise src.error(path + (("variant",) if isinstance(v, dict) else ()), show(name),
                        "a variant of this suite: " + ", ".join(variants), did_you_mean(str(name), variants))
    return Operand(str(name), of)


def _expectation(e, path, src, variants) -> Expectation:
    if not isinstance(e, dict):
        raise src.error(path, show(e), "a mapping like {ratio: [A, B], of: crossing, below: 0.2}")
    src.check_keys(e, EXPECT_KEYS, path)
    kinds = [k for k in ("ratio", "difference", "value") if k in e]
    if len(kinds) != 1:
        raise src.error(path, "no ratio, difference or value" if not kinds else "both " + " and ".join(kinds),
                        "exactly one of ratio: [A, B], difference: [A, B] or value: A")
    kind = kinds[0]
    of = _quantity(e.get("of", "crossing"), path + ("of",), src)
    if kind == "value":
        a, b = _operand(e[kind], of, path + (kind,), src, variants), None
    else:
        pair = e[kind]
        if not isinstance(pair, list) or len(pair) != 2:
            raise src.error(path + (kind,), show(pair), "two variants [A, B] (or {variant: A, of: QUANTITY})")
        a, b = (_operand(v, of, path + (kind, i), src, variants) for i, v in enumerate(pair))
    bounds = {k: e[k] for k in ("below", "above", "between") if k in e}
    if len(bounds) != 1:
        raise src.error(path, "no bound" if not bounds else "both " + " and ".join(bounds),
                        "one of below: x, above: x or between: [lo, hi]")
    below = build(float, e["below"], path + ("below",), src) if "below" in e else None
    above = build(float, e["above"], path + ("above",), src) if "above" in e else None
    between = build(tuple[float, float], e["between"], path + ("between",), src) if "between" in e else None
    if between is not None and between[0] >= between[1]:
        raise src.error(path + ("between",), show(e["between"]), "[lo, hi] with lo < hi")
    require = e.get("require", "median")
    if require not in ("median", "all"):
        raise src.error(path + ("require",), show(require), "median or all")
    absolute = build(bool, e.get("abs", False), path + ("abs",), src)
    default = f"{kind} {a.variant}" + (f"/{b.variant}" if b else "") + f" of {of}"
    name = build(str, e.get("name", default), path + ("name",), src)
    return Expectation(name, kind, a, b, below, above, between, absolute, require)


def primary_crossing(recipe: Recipe) -> str:
    col = next(iter(recipe.phases), "loss")
    rule = next(iter(recipe.phases.get(col, {"below": 0})), "below")
    return C.crossing_column(col, rule)
