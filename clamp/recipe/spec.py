"""Recipes: YAML → a typed, frozen Recipe (recipe.py), or a one-line error before anything runs.

Recipe layer; first real stage of the flow (recipe.yaml ─spec→ Recipe). Checks every key, type and
range; task options against the task's Options; `to:`/`how:` and their options against
the value-source registry; every site, subcircuit and parameter name against the model
the recipe builds; and step windows against the run length. Conflicts between
interventions are checked by compile.py, which reports them with the same locations
(a Recipe keeps its Source).

`load_recipe(path, overrides=["train.lr=1e-3", ...])` is the entry point;
`recipe_to_dict` / `dump_recipe` write the resolved recipe back (round trip exact).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..measures import MEASURES
from ..models import hf, seam, usermodel  # seam: the table of model families (their sites, their shapes)
from ..models.plugins import is_path, load_plugin
from ..names import sites as S
from ..names.errors import InputError, did_you_mean, kind, show
from ..names.phases import PLATEAU, PLATEAU_DOC
from ..names.schema import build, build_dataclass
from ..names.yamlio import Source, check_name, load_yaml, load_yaml_file, read_text, safe_name
from ..tasks import TASKS, get_task
from ..values.base import VALUES
from . import outputs
from .interventions import as_list, parse_intervention, parse_probes, parse_subcircuits
from .overrides import apply_override, deep_merge, labelled
from .types import (
    BUILTIN_ONLY,
    PHASE_RULES,
    TOP_KEYS,
    ModelConfig,
    Recipe,
    TaskSpec,
    TrainConfig,
    model_shape,
    recipe_to_dict,
)

# ---------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | os.PathLike, overrides: Sequence[str | tuple[str, str]] = ()) -> Recipe:
    """Read and check a recipe file; `overrides` are 'key.path=value' strings (as `--set`)."""
    path = os.fspath(path)
    data, src = load_yaml_file(path, "a recipe file")
    data, src = resolve_extends(data, src, path)
    default_name = os.path.splitext(os.path.basename(path))[0]
    return recipe_from_data(data, src, overrides, default_name=default_name)


MAX_EXTENDS = 32            # files in one chain of extends
MAX_SEEDS = 1000            # seeds in one recipe or suite: each is a run with a directory of its own


def resolve_extends(data: Any, src: Source, path: str, seen: tuple = ()) -> tuple[Any, Source]:
    """`extends: other.yaml` (relative to this file): that recipe's data with this file's keys merged
    over it (mappings merge key by key, everything else is replaced). Locations stay exact."""
    if not isinstance(data, dict) or "extends" not in data:
        return data, src
    rel = data.pop("extends")
    if not isinstance(rel, str):
        raise src.error(("extends",), show(rel), "a recipe path relative to this file")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), rel))
    if base_path in seen or base_path == os.path.normpath(path):
        raise src.error(("extends",), show(rel), "a recipe that does not extend itself")
    if len(seen) + 1 >= MAX_EXTENDS:
        raise src.error(("extends",), f"{show(rel)}, file {len(seen) + 2} of a chain of extends",
                        f"at most {MAX_EXTENDS} files in a chain of extends", "merge some of them into one")
    try:
        text = read_text(base_path, "a recipe file")
    except InputError as e:
        raise src.error(("extends",), show(rel), f"{e.expected} (relative to this file)",
                        f"{e.where}: {e.found}") from None
    base, bsrc = load_yaml(text, base_path)
    if base is not None and not isinstance(base, dict):
        raise src.error(("extends",), f"{show(rel)}, whose content is {kind(base)}",
                        "a recipe (a mapping of recipe keys) to extend")
    base, bsrc = resolve_extends(base or {}, bsrc, base_path, seen + (os.path.normpath(path),))
    if "name" in base and "name" not in data:            # a recipe is named by its own file, not by what it extends
        base = {k: v for k, v in base.items() if k != "name"}
    merged = Source(src.file, dict(src.lines), dict(src.overrides))
    for p, line in bsrc.lines.items():
        if p not in src.lines:
            merged.overrides.setdefault(p, f"{bsrc.file}:{line}")
    for p, label in bsrc.overrides.items():
        merged.overrides.setdefault(p, label)
    return deep_merge(base, data), merged


def absolute_paths(data: Any, src: Source, prefix: tuple = ()) -> Any:
    """A copy of recipe data (or of a suite's override mapping) with every path-valued option that is
    relative (a graft's `run`, a selection's `run`) made absolute relative to the file that wrote it,
    so the data means the same when written elsewhere (a suite directory's suite.yaml). Anything it
    does not recognise is left for the parser to judge."""
    data = copy.deepcopy(data)
    if not isinstance(data, dict):
        return data

    def fix(d: dict, key: str, path: tuple, keywords=()) -> None:
        v = d.get(key)
        if isinstance(v, str) and v and v not in keywords and "\x00" not in v:
            d[key] = src.resolve(path + (key,), v)

    def items(lst, path):
        for i, it in enumerate(lst if isinstance(lst, list) else []):
            if not isinstance(it, dict):
                continue
            for k in ("to", "how"):
                name = it.get(k)
                opts, where = it, path + (i,)
                if isinstance(name, dict) and len(name) == 1:
                    (name, inline), = name.items()
                    if isinstance(inline, dict):
                        opts, where = inline, path + (i, k, name)
                cls = VALUES.get(name) if isinstance(name, str) else None
                for f in dataclasses.fields(cls.Options) if cls else ():
                    if f.metadata.get("path"):
                        fix(opts, f.name, where, f.metadata.get("keywords", ()))

    items(data.get("interventions"), prefix + ("interventions",))
    plugins = data.get("plugins")
    if isinstance(plugins, list):
        for i, entry in enumerate(plugins):
            if isinstance(entry, str) and is_path(entry):
                plugins[i] = src.resolve(prefix + ("plugins", i), entry)
    probes = data.get("probes")
    for name, lst in (probes.items() if isinstance(probes, dict) else ()):
        items(lst if isinstance(lst, list) else [lst], prefix + ("probes", name))
    subs = data.get("subcircuits")
    for name, sc in (subs.items() if isinstance(subs, dict) else ()):
        if isinstance(sc, dict) and isinstance(sc.get("select"), dict):
            fix(sc["select"], "run", prefix + ("subcircuits", name, "select"), ("self",))
    return data


def recipe_from_data(data: Any, src: Source | None = None, overrides: Sequence[str | tuple[str, str]] = (),
                     default_name: str = "recipe") -> Recipe:
    src = src or Source()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise src.error((), kind(data), "a mapping of recipe keys: " + ", ".join(TOP_KEYS))
    data = copy.deepcopy(data)
    for item in overrides:
        text, label = labelled(item)
        apply_override(data, text, src, label)
    return parse_recipe(data, src, default_name)


def parse_recipe(data: dict, src: Source, default_name: str = "recipe") -> Recipe:
    src.check_keys(data, TOP_KEYS)
    name = check_name(data.get("name", safe_name(default_name)), ("name",), src)
    seeds = build(tuple[int, ...], data.get("seeds", [0]), ("seeds",), src)
    if not seeds:
        raise src.error(("seeds",), "an empty list", "at least one seed")
    if len(set(seeds)) != len(seeds):
        raise src.error(("seeds",), show(list(seeds)), "each seed once")
    if len(seeds) > MAX_SEEDS:
        raise src.error(("seeds",), f"{len(seeds)} seeds", f"at most {MAX_SEEDS:,} seeds in one recipe (each is a run "
                        "with its own directory, trained and summarised one by one)", "split them over several runs")
    plugins = import_plugins(data.get("plugins"), src)     # first: a plug-in may register the task, sources, measures
    task = _task(data.get("task"), src)
    mdata = data.get("model")
    if mdata is None or isinstance(mdata, dict):          # the task's own model defaults (e.g. embed_std)
        mdata = {**TASKS[task.name].default_model, **(mdata or {})}
    model = build_dataclass(ModelConfig, mdata, ("model",), src)
    _check_model(model, plugins, task, src)
    written: dict = data["model"] if isinstance(data.get("model"), dict) else {}
    for k in model.unused_keys():
        if k in written and k in BUILTIN_ONLY + ("d_head",):
            what = model.module or model.family
            raise src.error(("model", k), show(written[k]), f"no {k} for {what} (it is the built-in transformer's; "
                            f"{what} has its own architecture)", "remove the key")
    tdata = data.get("train")
    if tdata is None or isinstance(tdata, dict):          # the task's own training defaults
        tdata = {**TASKS[task.name].default_train, **(tdata or {})}
    train = build_dataclass(TrainConfig, tdata, ("train",), src)
    if train.device == "cuda" and not torch.cuda.is_available():
        raise src.error(("train", "device"), "'cuda'", "a device this machine has: cpu or auto (no CUDA device is "
                        "visible)", "device: auto trains on a GPU where there is one")
    known = TASKS[task.name].evaluator_names
    for path, ev in [(("train", "evaluators", i), ev) for i, ev in enumerate(train.evaluators)] + \
            [(("train", "evaluator_every", ev), ev) for ev in train.evaluator_every]:
        if ev not in known:
            raise src.error(path, show(ev), f"an evaluator of {task.name}: " + ", ".join(known),
                            did_you_mean(ev, known))
    shape = _shape(model, task, plugins, src)
    subcircuits = parse_subcircuits(data.get("subcircuits"), src, shape)
    interventions = tuple(parse_intervention(item, ("interventions", i), src, shape, subcircuits, train.steps)
                          for i, item in enumerate(as_list(data.get("interventions"), ("interventions",), src)))
    for i, iv in enumerate(interventions):
        sc = subcircuits.get(iv.target)
        if sc is not None and sc.select is not None and sc.select.run == "self":
            raise src.error(("interventions", i, iv.kind), show(iv.target),
                            "a subcircuit whose heads are known before training",
                            f"subcircuits.{iv.target}.select.run: self chooses heads at each evaluation, so it "
                            "can be used in probes only; name a finished run instead")
    measure = _measures(data.get("measure"), src, task.name)
    phases = _phases(data.get("phases"), src, TASKS[task.name].default_phases(task.options))
    probes = parse_probes(data.get("probes"), src, shape, subcircuits, train.steps)
    recipe = Recipe(name, seeds, model, task, train, subcircuits, interventions, measure, phases, probes, plugins,
                    src)
    if data.get("measure") is None:          # the task's default measures that this model can produce
        recipe = replace(recipe, measure=tuple(m for m in recipe.measure if not outputs.unavailable(recipe, m)))
    if data.get("phases") is None:           # the task's default rules, for the columns this recipe measures
        recipe = replace(recipe, phases=outputs.measured_phases(recipe))
    outputs.check(recipe)
    return recipe


def import_plugins(value, src) -> tuple[str, ...]:
    """`plugins:` a list of .py files or package directories (relative to the recipe), or installed
    module names; each imported here, so a broken one is an error at its entry."""
    out = []
    for i, entry in enumerate(as_list(value, ("plugins",), src)):
        path = ("plugins", i)
        if not isinstance(entry, str) or not entry or "\x00" in entry:
            raise src.error(path, show(entry), "a path to a .py file or package directory, or a module name")
        written = entry
        if is_path(entry):
            entry = src.resolve(path, entry)
        try:
            load_plugin(entry)
        except InputError as e:
            raise src.error(path, show(written), e.expected, e.hint) from None
        out.append(entry)
    return tuple(out)


def _check_model(model: ModelConfig, plugins: tuple[str, ...], task: TaskSpec, src: Source) -> None:
    if model.family not in seam.FAMILIES or model.family == "module":
        names = [f for f in seam.FAMILIES if f != "module"]
        raise src.error(("model", "family"), repr(model.family), "a model family: " + ", ".join(sorted(names)),
                        did_you_mean(model.family, names) or "a model of your own is model.module: <plug-in>:<factory>")
    if model.module and model.family != "builtin":
        raise src.error(("model", "family"), model.family, "no family with model.module (the factory builds the model)")
    for k in model.options:
        if k in usermodel.SHAPE_KEYS:
            raise src.error(("model", "options", k), repr(k), "a factory option other than the shape keys",
                            f"set model.{k}" if k not in ("vocab", "n_ctx") else "the task sets vocab and n_ctx")
    if model.options and not model.module:
        raise src.error(("model", "options"), show(model.options), "options only with model.module (a factory's "
                        "keyword arguments)", "a transformers family takes model.config")
    foreign = model.module or model.family != "builtin"
    if foreign and task.io().vector_dim:
        what = model.module or model.family
        raise src.error(("model", "module" if model.module else "family"), what, f"a task of tokens only for {what} "
                        f"({task.name} puts vectors at some positions; the built-in model takes them)")
    if model.family in hf.RESERVED:
        for k in hf.RESERVED[model.family]:
            if k in model.config:
                raise src.error(("model", "config", k), repr(k), "a key clamp does not set itself: the shape is "
                                "layers, heads, d_model and d_mlp; the task sets the vocabulary and positions")
    elif model.config:
        raise src.error(("model", "config"), show(model.config), "config only with a transformers family "
                        f"(model.family: {', '.join(hf.FAMILIES)})", "a user's factory takes model.options")
    if (model.backend == "nnsight" or foreign) and importlib.util.find_spec("nnsight") is None:
        key = "backend" if not foreign else "module" if model.module else "family"
        raise src.error(("model", key), f"{getattr(model, key)}, which needs nnsight (not installed)",
                        "the built-in model with the native backend, or nnsight installed",
                        "pip install 'clamp[nnsight]'")


def _shape(model: ModelConfig, task: TaskSpec, plugins: tuple[str, ...], src: Source) -> S.ModelShape:
    """The model's shape and its sites, checked now (a user's factory is called on the meta device)."""
    try:
        shape = model_shape(model, task.io(), plugins)
        S.catalogue(shape)
    except InputError as e:
        key = "module" if model.module else "family"
        raise src.error(("model", key), e.found, e.expected, e.hint) from None
    except (RuntimeError, ValueError, OverflowError, TypeError, MemoryError) as e:   # sizes torch cannot describe
        raise src.error(("task",) if "task" in src.lines or not src.lines else (), "a model torch cannot build "
                        f"at these sizes ({type(e).__name__}: {' '.join(str(e).split())[:80]})",
                        "sizes a real run could hold", "make the task or the model smaller") from None
    return shape


def _task(value, src) -> TaskSpec:
    path = ("task",)
    if value is None:
        value = {"name": "fewshot"}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise src.error(path, show(value), "a mapping with a task name and its options")
    name = value.get("name", "fewshot")
    try:
        cls = get_task(name)
    except InputError as e:
        raise src.error(path + ("name",), e.found, e.expected, e.hint) from None
    opts = build_dataclass(cls.Options, {k: v for k, v in value.items() if k != "name"}, path, src)
    return TaskSpec(name, opts)


def _measures(value, src, task: str) -> tuple[str, ...]:
    if value is None:
        return TASKS[task].default_measures
    items = build(tuple[str, ...], value, ("measure",), src)
    known = tuple(sorted(MEASURES))
    for i, m in enumerate(items):
        if m not in known:
            raise src.error(("measure", i), show(m), "a measure: one of " + ", ".join(known),
                            did_you_mean(m, known) or "(a plug-in can add one: README, Extending clamp)")
    return items


def _phases(value, src, defaults: dict) -> dict[str, dict]:
    if value is None:
        return {k: dict(v) for k, v in defaults.items()}
    if not isinstance(value, dict):
        raise src.error(("phases",), show(value), "a mapping of measure columns to rules, e.g. "
                        "{loss: {below: 0.277, relative: 0.5}}")
    out = {}
    for col, rules in value.items():
        path = ("phases", col)
        if not isinstance(rules, dict) or not rules:
            raise src.error(path, show(rules), "a mapping of rules: below, above, relative")
        for k, v in rules.items():
            src.check_keys([k], PHASE_RULES, path, what="rule")
            if k == "band":
                lo, hi = build(tuple[float, float], v, path + (k,), src)
                if lo >= hi:
                    raise src.error(path + (k,), show(v), "[low, high] with low < high")
            elif k == "relative" and isinstance(v, dict):
                _relative(v, path + (k,), src)
            else:
                build(float, v, path + (k,), src)
        if "below" in rules and "above" in rules:
            raise src.error(path, "both below and above", "one absolute threshold per measure")
        if "logistic" in rules and not 0 < float(rules["logistic"]) < 1:
            raise src.error(path + ("logistic",), show(rules["logistic"]), "a confidence level in (0, 1), e.g. 0.95")
        if "max_slope" in rules and float(rules["max_slope"]) < 0:
            raise src.error(path + ("max_slope",), show(rules["max_slope"]), "a smoothing width in steps >= 0")
        if "relative" in rules and not isinstance(rules["relative"], dict) and not 0 < float(rules["relative"]) < 1:
            raise src.error(path + ("relative",), show(rules["relative"]),
                            "a fraction in (0, 1) of the way from the plateau to the final level")
        out[str(col)] = {k: ([float(x) for x in v] if k == "band" else
                             {kk: float(x) for kk, x in v.items()} if isinstance(v, dict) else float(v))
                         for k, v in rules.items()}
    return out


def _relative(v: dict, path, src) -> None:
    """`relative: {frac: 0.5, flat: .., dwell: .., drop: .., sharp: ..}` (phases.PLATEAU's defaults)."""
    keys = ("frac",) + tuple(PLATEAU)
    src.check_keys(v, keys, path)
    for k, x in v.items():
        x = build(float, x, path + (k,), src)
        if k in ("frac", "flat", "dwell", "drop") and not 0 < x < 1:
            what = PLATEAU_DOC.get(k, "of the way from the plateau to the final level")
            raise src.error(path + (k,), show(v[k]), f"a fraction in (0, 1) ({what})")
        if k == "sharp" and not x >= 1:
            raise src.error(path + (k,), show(v[k]), "a factor >= 1 (" + PLATEAU_DOC["sharp"] + ")")
    if "frac" not in v:
        raise src.error(path, "no frac", "frac: the fraction of the way from the plateau to the final level, e.g. 0.5")


def with_overrides(r: Recipe, overrides: Sequence[str]) -> Recipe:
    """A new Recipe: `r` with 'key.path=value' overrides applied and everything re-checked."""
    return recipe_from_data(recipe_to_dict(r), Source(file=r.source.file), overrides, r.name)
