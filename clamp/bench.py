"""Suites: a base recipe × named variants × grid points × seeds, with paired expectations.

Flow position: suite.yaml ─bench→ many run dirs → results table (results.csv) → report.md.
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
import csv
import io
import itertools
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError, did_you_mean, format_path, show
from .phases import column_value
from .pool import Job, Outcome, available_cores, run_jobs
from .schema import Source, build, check_name, dump_yaml, safe_name, load_yaml, load_yaml_file, parse_key_path, read_text
from .spec import Recipe, absolute_paths, apply_override, dump_recipe, parse_recipe, resolve_extends
from . import budget, store
from .store import atomic_write, read_json, read_metrics, write_json
from .train import check_dir, train_seed

SUITE_KEYS = ("name", "base", "seeds", "variants", "grid", "set", "expect")
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

    def ok(self, x: float) -> bool:
        if self.between is not None:
            return self.between[0] < x < self.between[1]
        return x < self.below if self.below is not None else x > self.above


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


def _slug(v) -> str:
    return safe_name(str(v).replace(" ", ""))


# ---------------------------------------------------------------------------------------
# Loading


def load_suite(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Suite:
    path = os.fspath(path)
    data, src = load_yaml_file(path, "a suite file")
    return suite_from_data(data, src, overrides, os.path.splitext(os.path.basename(path))[0])


def suite_from_data(data: Any, src: Source | None = None, overrides: Sequence[str] = (),
                    default_name: str = "suite") -> Suite:
    src = src or Source()
    if not isinstance(data, dict):
        raise src.error((), show(data), "a mapping with keys " + ", ".join(SUITE_KEYS))
    for k in data:
        if k not in SUITE_KEYS:
            raise src.error((k,), f"unknown key {k!r}", "one of " + ", ".join(SUITE_KEYS),
                            did_you_mean(str(k), SUITE_KEYS))
    name = check_name(data.get("name", safe_name(default_name)), ("name",), src)
    overrides = list(build(tuple[str, ...], data.get("set", []), ("set",), src)) + list(overrides)
    base_data, base_src = _base(data.get("base"), src)
    seeds = build(tuple[int, ...], data.get("seeds", base_data.get("seeds", [0])), ("seeds",), src)
    if not seeds or len(set(seeds)) != len(seeds):
        raise src.error(("seeds",), show(list(seeds)), "a non-empty list of distinct seeds")
    variants = data.get("variants") or {"base": {}}
    if not isinstance(variants, dict):
        raise src.error(("variants",), show(variants), "a mapping of variant names to overrides")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise src.error(("grid",), show(grid), "a mapping of key.path to non-empty lists of values")
    base_data["seeds"] = [seeds[0]]
    base_run = copy.deepcopy(base_data)
    for o in overrides:
        apply_override(base_run, o, Source(base_src.file, dict(base_src.lines), dict(base_src.overrides)))
    base = parse_recipe(base_run, base_src, name)
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
            s = Source(vsrc.file, dict(vsrc.lines), dict(vsrc.overrides))
            _merge(d, ov, ("variants", vname), src, s)
            for k, v in point:
                _merge(d, {k: v}, ("grid", k), src, s)
            for o in overrides:                      # the command line has the last word
                apply_override(d, o, s)
            d["name"] = safe_name(f"{name}:{vname}" + "".join(f"[{k}={_slug(v)}]" for k, v in point))
            recipes[(str(vname), tuple(point))] = parse_recipe(d, s, name)
    ids: dict[str, tuple] = {}
    for (vname, point) in recipes:
        rid = run_id(vname, point)
        if rid in ids:
            raise src.error(("grid",), f"two runs with the directory name {rid!r} ({ids[rid]} and {point})",
                            "grid values that differ in more than characters a directory name cannot hold")
        ids[rid] = point
    exp = data.get("expect") or []
    if not isinstance(exp, list):
        raise src.error(("expect",), show(exp), "a list of expectations, each like {ratio: [A, B], below: 0.2}")
    expect = tuple(_expectation(e, ("expect", i), src, variants) for i, e in enumerate(exp))
    primary = primary_crossing(base)
    for i, e in enumerate(expect):
        for j, op in enumerate((e.a, e.b)):
            if op is not None:
                where = ("expect", i, e.kind) + ((j,) if e.kind != "value" else ())
                for (vname, point), recipe in recipes.items():
                    if vname == op.variant:
                        _check_quantity(op.of, primary, recipe, where, src)
    raw = {**copy.deepcopy(data), "name": name, "base": absolute_paths(base_data, base_src), "seeds": list(seeds),
           "variants": copy.deepcopy(inlined)}
    if overrides:
        raw["set"] = overrides
    return Suite(name, src.file, base, seeds, variants, grid, expect, recipes, raw)


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


def _merge(data: dict, overrides: dict, where: tuple, suite_src: Source, run_src: Source) -> None:
    """Apply overrides (nested mappings merge, key.path keys address inside) to recipe data."""
    for key, value in overrides.items():
        path = parse_key_path(str(key), suite_src.where(where + (key,)))
        node = data
        for p in path[:-1]:
            if isinstance(node, dict):
                node = node.setdefault(p, {})
            elif isinstance(node, list) and isinstance(p, int) and p < len(node):
                node = node[p]
            else:
                raise suite_src.error(where + (key,), show(key), "a key path into the base recipe")
        last = path[-1]
        label = suite_src.where(where + (key,))
        if isinstance(value, dict) and value and isinstance(node, dict) and isinstance(node.get(last), dict):
            _merge(node[last], value, where + (key,), suite_src, run_src)
            continue
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise suite_src.error(where + (key,), show(key), "an index into an existing list")
        elif not isinstance(node, dict):
            raise suite_src.error(where + (key,), f"{show(key)}, but {format_path(path[:-1])} is {show(node)}",
                                  "a key path into a mapping of the base recipe")
        node[last] = copy.deepcopy(value)
        run_src.overrides[tuple(path)] = label


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
    from .columns import matching
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
    for k in e:
        if k not in EXPECT_KEYS:
            raise src.error(path + (k,), f"unknown key {k!r}", "one of " + ", ".join(EXPECT_KEYS),
                            did_you_mean(str(k), EXPECT_KEYS))
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


# ---------------------------------------------------------------------------------------
# Running


def extensions_for(recipe: Recipe) -> dict:
    """The task and value-source classes a recipe uses, so a worker that did not import the
    caller's code (a Ray worker, a spawned process) can register them before training."""
    from .tasks import TASKS
    from .values import VALUES
    return {"tasks": {recipe.task.name: TASKS[recipe.task.name]},
            "values": {iv.source: VALUES[iv.source] for iv in recipe.interventions if iv.source}}


def install_extensions(ext: dict) -> None:
    from .tasks import TASKS
    from .values import VALUES
    for name, cls in ext.get("tasks", {}).items():
        TASKS.setdefault(name, cls)
    for name, cls in ext.get("values", {}).items():
        VALUES.setdefault(name, cls)


def _train_job(recipe: Recipe, seed: int, run_dir: str, run_key: str, ext: dict | None = None,
               progress=None) -> dict:
    install_extensions(ext or {})

    def tagged(ev):
        if progress:
            progress({**ev, "run": run_key})
    return train_seed(recipe, seed, run_dir, progress=tagged)


@dataclass
class SuiteResult:
    suite: Suite
    dir: Path
    rows: list[dict]
    verdicts: list[dict]

    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows) and all(v["verdict"] == "PASS" for v in self.verdicts)

    def text(self) -> str:
        from .report import suite_text
        return suite_text(self)


def run_suite(suite: Suite, out: str | os.PathLike, *, workers: int | None = None, backend: str = "local",
              address: str | None = None, progress: Callable[[dict], None] | None = None,
              fresh: bool = False, max_memory: float | None = None) -> SuiteResult:
    """Run every variant × grid point × seed of a suite into `out` (resuming what is there).

    Refused before anything is written (InputError) when a run's memory estimate is above
    `max_memory`, when `out` is another process's or not clamp's, or when a run directory holds a
    different recipe; `fresh` first deletes `out`'s contents (only if clamp made it)."""
    out = Path(out)
    runs = suite.runs()
    for recipe in suite.recipes.values():
        budget.check(recipe, max_memory)
    dirs = {(r.id, r.seed): out / "runs" / r.id / f"seed_{r.seed}" for r in runs}
    emit = progress or (lambda ev: None)

    def check() -> None:
        for r in runs:
            check_dir(dirs[r.id, r.seed], dump_recipe(replace(r.recipe, seeds=(r.seed,))))
    if not fresh:
        store.check_writable(out)
        check()                                            # refused before anything is touched
    with store.writer(out, "suite", fresh=fresh) as held:
        if held["deleted"]:
            emit({"event": "deleted", "dir": str(out), "files": held["deleted"]})
        check()
        return _run_suite(suite, out, runs, dirs, workers, backend, address, progress)


def _run_suite(suite: Suite, out: Path, runs: list[RunSpec], dirs: dict, workers, backend, address,
               progress) -> SuiteResult:
    atomic_write(out / "suite.yaml", dump_yaml(suite.data))
    jobs = [Job((r.id, r.seed), _train_job, (r.recipe, r.seed, str(dirs[r.id, r.seed]), f"{r.id}/seed_{r.seed}",
                                             extensions_for(r.recipe)),
                r.recipe.train.threads) for r in runs]
    done: dict = {}

    def finished(o: Outcome) -> None:
        done[o.key] = o
        write_results(suite, out, runs, done)
        if progress and o.error is not None:
            progress({"event": "done", "run": f"{o.key[0]}/seed_{o.key[1]}", "status": "failed", "error": o.error})

    write_results(suite, out, runs, done)
    if backend == "ray":
        from .raybackend import run_jobs_ray
        run_jobs_ray(jobs, address=address, on_event=progress, on_done=finished)
    else:
        run_jobs(jobs, workers or available_cores(), on_event=progress, on_done=finished)
    for r in runs:                                     # a run whose worker died still has a summary
        o = done.get((r.id, r.seed))
        d = dirs[r.id, r.seed]
        if o is not None and o.error is not None and d.is_dir() and (read_json(d / "summary.json") or {}).get(
                "status") in (None, "ok"):
            write_json(d / "summary.json", {"name": r.recipe.name, "seed": r.seed, "status": "failed",
                                            "error": o.error})
    res = write_results(suite, out, runs, done)
    from .report import plot_curves, suite_curves
    curves = suite_curves(res)
    if any(curves.values()):
        plot_curves(curves, out / "loss_curves.png", title=f"suite {suite.name}")
    return res


def load_results(path: str | os.PathLike) -> SuiteResult:
    """Re-read a suite directory (suite.yaml + each run's summary.json) without running anything."""
    d = Path(path)
    if not (d / "suite.yaml").exists():
        raise InputError(str(d), "", "no suite.yaml", "a directory written by `clamp bench`")
    data, src = load_yaml_file(d / "suite.yaml", "a suite file")
    suite = suite_from_data(data, src)
    runs = suite.runs()
    done = {}
    for r in runs:
        sm = read_json(d / "runs" / r.id / f"seed_{r.seed}" / "summary.json")
        if sm is not None:
            done[(r.id, r.seed)] = Outcome((r.id, r.seed), sm)
    rows = result_rows(runs, done, _at_columns(suite), d)
    return SuiteResult(suite, d, rows, [judge(e, rows, suite) for e in suite.expect])


def _at_columns(suite: Suite) -> set[str]:
    qs = {op.of for e in suite.expect for op in (e.a, e.b) if op is not None}
    return {q for q in qs if q.startswith("at:")}


def result_rows(runs: list[RunSpec], done: dict, at: set[str] = frozenset(), base: Path | None = None) -> list[dict]:
    rows = []
    for r in runs:
        o = done.get((r.id, r.seed))
        row: dict = {"run": r.id, "variant": r.variant, "grid": r.point, "seed": r.seed}
        if o is None:
            row.update(status="pending")
        elif o.error is not None:
            row.update(status="failed", error=o.error)
        else:
            s = o.value
            row.update(status=s.get("status"), error=s.get("error") or "", wall_s=s.get("wall_s"),
                       steps=s.get("steps"), resumed_from=s.get("resumed_from"))
            for col, rules in s.get("phases", {}).items():
                for rule, res in rules.items():
                    if isinstance(res, dict):
                        row[f"crossing:{col}:{rule}"] = res.get("step")
                        for fld in ("reach", "leave", "fraction", "plateau_over_reach"):
                            if fld in res:
                                row[f"phase:{col}:{rule}:{fld}"] = res[fld]
            for col, v in s.get("final", {}).items():
                if isinstance(v, (int, float)):
                    row[f"final:{col}"] = v
            if at and base is not None:
                metrics = read_metrics(base / "runs" / r.id / f"seed_{r.seed}" / "metrics.jsonl")
                for q in at:
                    _, step, col = q.split(":", 2)
                    row[q] = next((column_value(m, col) for m in metrics if m["step"] == int(step)), None)
        rows.append(row)
    return rows


def write_results(suite: Suite, out: Path, runs: list[RunSpec], done: dict) -> SuiteResult:
    from .report import suite_markdown
    rows = result_rows(runs, done, _at_columns(suite), out)
    verdicts = [judge(e, rows, suite) for e in suite.expect]
    res = SuiteResult(suite, out, rows, verdicts)
    atomic_write(out / "results.csv", rows_to_csv(rows))
    atomic_write(out / "report.md", suite_markdown(res))
    return res


def rows_to_csv(rows: list[dict]) -> str:
    fixed = ["variant", "grid", "seed", "status", "error", "wall_s", "steps", "resumed_from", "run"]
    extra = sorted({k for r in rows for k in r} - set(fixed), key=lambda k: (not k.startswith("crossing"), k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fixed + extra, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fixed + extra})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Expectations


def value_of(row: dict, of: str, primary: str) -> tuple[float | None, bool]:
    """(value, censored) of a quantity in a result row. A phase change that never happened (no
    crossing, or no plateau to leave) is censored: it counts as the run length, a lower bound."""
    if row.get("status") != "ok":
        return None, False
    parts = of.split(":")
    if of == "crossing":
        key = primary
    elif parts[0] == "crossing" or (parts[0] == "phase" and (len(parts) == 3 or parts[3] == "step")):
        key = f"crossing:{parts[1]}:{parts[2]}"
    elif parts[0] == "phase":
        v = row.get(of)
        return (None if v in (None, "") else float(v)), False
    elif parts[0] == "final":
        return column_value(row, of.split(":", 1)[1], prefix="final:"), False
    else:
        key = of
    v = row.get(key)
    if key.startswith("crossing:") and v in (None, ""):
        return float(row.get("steps") or 0), True
    return (None if v in (None, "") else float(v)), False


def primary_crossing(recipe: Recipe) -> str:
    col = next(iter(recipe.phases), "loss")
    rule = next(iter(recipe.phases.get(col, {"below": 0})), "below")
    return f"crossing:{col}:{rule}"


INF = float("inf")


def _interval(e: Expectation, va: float, ca: bool, vb: float | None, cb: bool) -> tuple[float, float] | None:
    """The range the per-seed statistic can lie in: a censored time is a lower bound (>= its value)."""
    a = (va, INF if ca else va)
    if e.kind == "value":
        lo, hi = a
    else:
        b = (vb, INF if cb else vb)
        if e.kind == "ratio":
            if b[0] <= 0 or a[0] < 0:
                return None if b[0] == 0 else (va / vb, va / vb) if not (ca or cb) else None
            lo, hi = a[0] / b[1], a[1] / b[0]
        else:
            lo, hi = a[0] - b[1], a[1] - b[0]
    if e.abs:
        lo, hi = (lo, hi) if lo >= 0 else (-hi, -lo) if hi <= 0 else (0.0, max(-lo, hi))
    return lo, hi


def _decide(e: Expectation, lo: float, hi: float) -> bool | None:
    """True if the rule holds for every value in [lo, hi], False if for none, None if it depends."""
    if e.between is not None:
        a, b = e.between
        return True if a < lo and hi < b else False if hi <= a or lo >= b else None
    if e.below is not None:
        return True if hi < e.below else False if lo >= e.below else None
    return True if lo > e.above else False if hi <= e.above else None


def judge(e: Expectation, rows: list[dict], suite: Suite) -> dict:
    """Per seed (and grid point): the statistic, and the range it can lie in when a phase change was
    censored; then the median, its range over seeds, a sign test, and a verdict that is PASS or FAIL
    only if it holds whatever the censored times really are (else CENSORED)."""
    from scipy.stats import binomtest
    primary = primary_crossing(suite.base)
    index = {(r["variant"], r["grid"], r["seed"]): r for r in rows}
    per: list[dict] = []
    for point in sorted({r["grid"] for r in rows}):
        for seed in suite.seeds:
            ra = index.get((e.a.variant, point, seed))
            rb = index.get((e.b.variant, point, seed)) if e.b else None
            if ra is None or (e.b and rb is None):
                continue
            va, ca = value_of(ra, e.a.of, primary)
            vb, cb = value_of(rb, e.b.of, primary) if e.b else (None, False)
            if va is None or (e.b and vb is None):
                continue
            if e.kind == "ratio":
                if vb == 0:
                    continue
                x = va / vb
            elif e.kind == "difference":
                x = va - vb
            else:
                x = va
            x = abs(x) if e.abs else x
            iv = _interval(e, va, ca, vb, cb)
            if iv is None:
                continue
            per.append({"grid": point, "seed": seed, "value": x, "censored": ca or cb, "a": va, "b": vb,
                        "low": iv[0], "high": iv[1], "holds": _decide(e, *iv)})
    desc = e.a.variant if e.a.of == (e.b.of if e.b else e.a.of) else f"{e.a.variant}:{e.a.of}"
    if e.b:
        desc += f" / {e.b.variant}" if e.kind == "ratio" else f" − {e.b.variant}"
        if e.b.of != e.a.of:
            desc += f":{e.b.of}"
    if e.a.of == (e.b.of if e.b else e.a.of):
        desc += f" of {e.a.of}"
    out = {"name": e.name, "kind": e.kind, "a": e.a.variant, "b": e.b.variant if e.b else None,
           "of": e.a.of, "statistic": ("|" + desc + "|") if e.abs else desc, "rule": e.rule(),
           "per_seed": per, "n": len(per), "censored": sum(p["censored"] for p in per)}
    if not per:
        return {**out, "median": None, "min": None, "max": None, "p": None, "verdict": "NO DATA",
                "note": "no finished run pair to compare"}
    xs = [p["value"] for p in per]
    med = statistics.median(xs)
    med_lo = statistics.median([p["low"] for p in per])
    med_hi = statistics.median([p["high"] for p in per])
    decided = [p["holds"] for p in per if p["holds"] is not None]
    hits = sum(decided)
    p = binomtest(hits, len(decided), 0.5, alternative="greater").pvalue if decided else None
    if e.require == "median":
        holds = _decide(e, med_lo, med_hi)
    else:
        holds = False if False in [q["holds"] for q in per] else True if all(q["holds"] for q in per) else None
    verdict = {True: "PASS", False: "FAIL", None: "CENSORED"}[holds]
    note = ""
    if out["censored"]:
        note = (f"{out['censored']} of {len(per)} seed(s) had a phase change that did not happen within the run "
                f"(counted as the run length, a lower bound); the median lies in [{med_lo:.3g}, {med_hi:.3g}]")
        if holds is None:
            note += ", on both sides of the rule: undecided"
    return {**out, "median": med, "median_range": [med_lo, med_hi], "min": min(xs), "max": max(xs), "hits": hits,
            "p": p, "verdict": verdict, "note": note}


def bench(suite: str | os.PathLike | Suite, out: str | os.PathLike | None = None, *,
          workers: int | None = None, backend: str = "local", address: str | None = None,
          progress: Callable[[dict], None] | None = None) -> SuiteResult:
    """Python API of `clamp bench`: run a suite (path or Suite) and return its results."""
    s = suite if isinstance(suite, Suite) else load_suite(suite)
    return run_suite(s, out or Path("runs") / s.name, workers=workers, backend=backend,
                     address=address, progress=progress)
