"""Recipes: YAML → a typed, frozen Recipe, or a one-line error before anything runs.

First real stage of the flow (recipe.yaml ─spec→ Recipe). Checks every key, type and
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
import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

from . import outputs
from . import sites as S
from .errors import InputError, did_you_mean, format_path, show
from .schema import (Source, build, build_dataclass, check_name, safe_name, dump_yaml, load_yaml, load_yaml_file, non_negative, opt,
                     parse_key_path, positive, read_text, unbuild)
from .tasks import TASKS, TaskIO, get_task
from .values import VALUES, get_value

KINDS = ("clamp", "ablate", "freeze")
# Bounds that keep checking a recipe fast whatever it says (sizes are bounded by budget.py's
# memory estimate, which a flag can lift; these no flag lifts).
MAX_LAYERS, MAX_HEADS, MAX_STEPS = 1024, 1024, 10 ** 9


@dataclass(frozen=True)
class ModelConfig:
    layers: int = opt(2, check=lambda v: None if 0 < v <= MAX_LAYERS else f"a number in 1..{MAX_LAYERS}",
                      doc="transformer blocks")
    heads: int = opt(8, check=lambda v: None if 0 < v <= MAX_HEADS else f"a number in 1..{MAX_HEADS}",
                     doc="attention heads per block")
    d_model: int = opt(64, check=positive, doc="residual stream width")
    d_head: int = opt(0, check=non_negative, doc="per-head width (0: d_model / heads)")
    attn_only: bool = opt(True, doc="no MLPs")
    d_mlp: int = opt(0, check=non_negative, doc="MLP width (0: 4·d_model)")
    norm: Literal["pre", "none"] = opt("pre", doc="pre-LayerNorm or none")
    pos: Literal["rope", "learned", "none"] = opt("rope", doc="positional information")
    embed_std: float = opt(0.02, check=positive, doc="std of the token (and learned position) embeddings at init, as Singh et al. and nanoGPT")

    def validate(self):
        if self.d_head == 0 and self.d_model % self.heads:
            return ("d_head", f"set (d_model {self.d_model} is not divisible by heads {self.heads})")
        if self.pos == "rope" and self.head_width() % 2:
            return ("pos", "'learned' or 'none' (RoPE needs an even d_head)")
        return None

    def head_width(self) -> int:
        return self.d_head or self.d_model // self.heads


EvalEvery = int | tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = opt(2000, check=lambda v: None if 0 < v <= MAX_STEPS else f"a number in 1..{MAX_STEPS:,}",
                     doc="optimizer steps")
    batch: int = opt(32, check=positive, doc="sequences per step")
    optimizer: Literal["adam", "adamw", "sgd"] = opt("adam", doc="optimizer")
    lr: float = opt(1e-3, check=positive, doc="learning rate (constant)")
    weight_decay: float = opt(0.0, check=non_negative, doc="weight decay (decoupled for adamw)")
    betas: tuple[float, float] = opt((0.9, 0.999), doc="Adam betas")
    eval_every: EvalEvery = opt(100, doc="evaluate every N steps, or [[from_step, every], ...]")
    eval_size: int = opt(1000, check=positive, doc="sequences per evaluator")
    evaluators: tuple[str, ...] = opt((), doc="evaluators to run (default: all the task has)")
    checkpoint_every: int = opt(0, check=non_negative, doc="checkpoint every N steps (0: only the last)")
    probe_every: int = opt(1, check=non_negative, doc="evaluate probes every N-th evaluation (0: only the last)")
    stop: dict[str, dict[str, float]] = opt(factory=dict, doc="stop at the first evaluation meeting every rule, "
                                            "e.g. {loss: {below: 0.05}}")
    threads: int = opt(1, check=positive, doc="torch threads per run")

    def validate(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            return ("betas", "two numbers in [0, 1), e.g. [0.9, 0.999]")
        for col, rule in self.stop.items():
            if not rule or any(k not in ("below", "above") for k in rule):
                return ("stop", "{column: {below: x}} or {column: {above: x}}")
        ee = self.eval_every
        if isinstance(ee, int):
            return None if ee > 0 else ("eval_every", "a positive number of steps")
        starts = [a for a, _ in ee]
        if not ee or starts[0] != 0 or any(b <= 0 for _, b in ee) or starts != sorted(set(starts)):
            return ("eval_every", "[[0, every], [from_step, every], ...] with rising from_steps and every > 0")
        return None

    def is_eval_step(self, step: int) -> bool:
        """Whether the model is evaluated after `step` updates: 0, the last step, and the schedule's."""
        if step == 0 or step == self.steps:
            return True
        ee = self.eval_every if not isinstance(self.eval_every, int) else ((0, self.eval_every),)
        for i, (a, every) in enumerate(ee):
            b = ee[i + 1][0] if i + 1 < len(ee) else self.steps
            if a <= step < b:
                return (step - a) % every == 0
        return False


HEAD_MEASURES = ("prev_token_score", "label_prev_token_score", "induction_strength", "induction_score")


@dataclass(frozen=True)
class Selection:
    """Heads chosen by measurement: the heads of `layer` ranked or thresholded by a per-head measure."""

    layer: int = opt(0, check=lambda v: None if v >= 0 else "a layer >= 0", doc="the layer whose heads are chosen")
    by: Literal["prev_token_score", "label_prev_token_score", "induction_strength", "induction_score"] = opt(
        "prev_token_score", doc="the per-head measure")
    top: int = opt(0, check=lambda v: None if v >= 0 else "a count >= 0", doc="the k highest")
    bottom: int = opt(0, check=lambda v: None if v >= 0 else "a count >= 0", doc="the k lowest")
    above: float | None = opt(None, doc="every head whose measure is above this")
    below: float | None = opt(None, doc="every head whose measure is below this")
    complement: bool = opt(False, doc="take the other heads of the layer instead")
    run: str = opt("self", doc="'self' (this run, at each evaluation; probes only) or a run directory "
                               "relative to the recipe file ({seed} becomes the seed)", path=True, keywords=("self",))
    at: int = opt(-1, doc="the evaluation step of that run (-1: its last)")

    def validate(self):
        rules = [self.top > 0, self.bottom > 0, self.above is not None, self.below is not None]
        if sum(rules) != 1:
            return ("", "exactly one rule: top: k, bottom: k, above: x or below: x")
        return None

    def describe(self) -> str:
        rule = (f"top {self.top}" if self.top else f"bottom {self.bottom}" if self.bottom else
                f"{self.by} > {self.above}" if self.above is not None else f"{self.by} < {self.below}")
        where = "this run's own measures at each evaluation" if self.run == "self" else \
            f"{self.run} at {'its last evaluation' if self.at < 0 else f'step {self.at}'}"
        return f"{'all but ' if self.complement else ''}{rule} layer-{self.layer} heads by {self.by} in {where}"


@dataclass(frozen=True)
class Subcircuit:
    sites: tuple[str, ...] = opt((), doc="activation sites")
    params: tuple[str, ...] = opt((), doc="parameters")
    select: Selection | None = opt(None, doc="choose the heads by measurement (sites/params then name no heads)")


@dataclass(frozen=True)
class FreezeOptions:
    optimizer_state: Literal["hold", "accumulate"] = opt(
        "hold", doc="hold: the slice's optimizer moments and step count are held with its values, so at release it "
        "continues as if the window never happened (from step 0: a fresh start); accumulate: they advance from the "
        "slice's gradients while its values are restored")


@dataclass(frozen=True)
class Intervention:
    kind: str                                  # clamp | ablate | freeze
    target: str                                # a subcircuit name or a site / parameter name
    source: str | None                         # value source (clamp `to:`, ablate `how:`)
    options: Any                               # the source's options (frozen dataclass)
    windows: tuple[tuple[int, int], ...]       # half-open [start, end) optimizer steps
    name: str = ""                             # optional label for plans and reports
    preserve: tuple[str, ...] = ()             # 'patterns' and/or 'values' of later layers, from a reference pass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    options: Any

    def io(self) -> TaskIO:
        return TASKS[self.name].io(self.options)


@dataclass(frozen=True)
class Recipe:
    name: str
    seeds: tuple[int, ...]
    model: ModelConfig
    task: TaskSpec
    train: TrainConfig
    subcircuits: dict[str, Subcircuit]
    interventions: tuple[Intervention, ...]
    measure: tuple[str, ...]
    phases: dict[str, dict[str, float]]
    probes: dict[str, tuple[Intervention, ...]] = field(default_factory=dict)
    source: Source = field(default_factory=Source, compare=False, repr=False)

    def shape(self) -> S.ModelShape:
        return model_shape(self.model, self.task.io())


def model_shape(m: ModelConfig, io: TaskIO) -> S.ModelShape:
    return S.ModelShape(layers=m.layers, heads=m.heads, d_model=m.d_model, d_head=m.head_width(), embed_std=m.embed_std,
                        attn_only=m.attn_only, d_mlp=m.d_mlp or 4 * m.d_model, norm=m.norm, pos=m.pos,
                        vocab=io.vocab, n_out=io.n_out, n_ctx=io.n_ctx, vector_dim=io.vector_dim)


TOP_KEYS = ("name", "seeds", "model", "task", "train", "subcircuits", "interventions", "measure", "phases",
            "probes")
MEASURES = ("loss", "accuracy", "prev_token_score", "label_prev_token_score", "induction_strength",
            "induction_score", "composition")
PRESERVE = ("patterns", "values")
PHASE_RULES = ("below", "above", "relative", "band", "logistic", "max_slope")


# ---------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read and check a recipe file; `overrides` are 'key.path=value' strings (as `--set`)."""
    path = os.fspath(path)
    data, src = load_yaml_file(path, "a recipe file")
    data, src = resolve_extends(data, src, path)
    default_name = os.path.splitext(os.path.basename(path))[0]
    return recipe_from_data(data, src, overrides, default_name=default_name)


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
    try:
        text = read_text(base_path, "a recipe file")
    except InputError as e:
        raise src.error(("extends",), show(rel), f"{e.expected} (relative to this file)",
                        f"{e.where}: {e.found}") from None
    base, bsrc = load_yaml(text, base_path)
    if base is not None and not isinstance(base, dict):
        raise bsrc.error((), show(base), "a recipe (a mapping of recipe keys) to extend")
    base, bsrc = resolve_extends(base or {}, bsrc, base_path, seen + (os.path.normpath(path),))
    merged = Source(src.file, dict(src.lines), dict(src.overrides))
    for p, line in bsrc.lines.items():
        if p not in src.lines:
            merged.overrides.setdefault(p, f"{bsrc.file}:{line}")
    for p, label in bsrc.overrides.items():
        merged.overrides.setdefault(p, label)
    return deep_merge(base, data), merged


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key; anything else (lists, and an explicit empty mapping {}) replaces."""
    if isinstance(base, dict) and isinstance(over, dict) and over:
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return copy.deepcopy(over)


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
    probes = data.get("probes")
    for name, lst in (probes.items() if isinstance(probes, dict) else ()):
        items(lst if isinstance(lst, list) else [lst], prefix + ("probes", name))
    subs = data.get("subcircuits")
    for name, sc in (subs.items() if isinstance(subs, dict) else ()):
        if isinstance(sc, dict) and isinstance(sc.get("select"), dict):
            fix(sc["select"], "run", prefix + ("subcircuits", name, "select"), ("self",))
    return data


def recipe_from_data(data: Any, src: Source | None = None, overrides: Sequence[str] = (),
                     default_name: str = "recipe") -> Recipe:
    src = src or Source()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise src.error((), show(data), "a mapping of recipe keys: " + ", ".join(TOP_KEYS))
    data = copy.deepcopy(data)
    for text in overrides:
        apply_override(data, text, src)
    return parse_recipe(data, src, default_name)


def parse_override(text: str) -> tuple[list, Any]:
    """'train.lr=1e-3' → (['train', 'lr'], 0.001); the value is read as YAML (plain YAML only:
    tags and oversized values are refused as in files; text that is not YAML is a string)."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise InputError("--set", "", show(text), "key.path=value, e.g. --set train.lr=1e-3")
    parts = parse_key_path(key.strip(), f"--set {text}")
    if not raw.strip():
        return parts, None
    try:
        value, _ = load_yaml(raw, f"--set {text}")
    except InputError as e:
        if e.found != "text that is not valid YAML":
            raise
        value = raw
    return parts, value


def apply_override(data: dict, text: str, src: Source) -> None:
    parts, value = parse_override(text)
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p) if isinstance(node, dict) else (node[p] if isinstance(node, list) and
                                                           isinstance(p, int) and p < len(node) else None)
        if nxt is None:
            if isinstance(node, dict):
                node[p] = nxt = {}
            elif isinstance(node, list):
                raise InputError(f"--set {text}", format_path(parts[:i + 1]), "no such list item",
                                 "an index into an existing list")
            else:
                raise InputError(f"--set {text}", format_path(parts[:i]), show(node), "a mapping to set a key in")
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise InputError(f"--set {text}", format_path(parts), "no such list item",
                             f"an index below {len(node)}")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise InputError(f"--set {text}", format_path(parts[:-1]), show(node), "a mapping to set a key in")
    src.overrides[tuple(parts)] = f"--set {text}"


def parse_recipe(data: dict, src: Source, default_name: str = "recipe") -> Recipe:
    for key in data:
        if key not in TOP_KEYS:
            raise src.error((key,), f"unknown key {key!r}", "one of " + ", ".join(TOP_KEYS),
                            did_you_mean(str(key), TOP_KEYS))
    name = check_name(data.get("name", safe_name(default_name)), ("name",), src)
    seeds = build(tuple[int, ...], data.get("seeds", [0]), ("seeds",), src)
    if not seeds:
        raise src.error(("seeds",), "an empty list", "at least one seed")
    if len(set(seeds)) != len(seeds):
        raise src.error(("seeds",), show(list(seeds)), "each seed once")
    task = _task(data.get("task"), src)
    mdata = data.get("model")
    if mdata is None or isinstance(mdata, dict):          # the task's own model defaults (e.g. embed_std)
        mdata = {**TASKS[task.name].default_model, **(mdata or {})}
    model = build_dataclass(ModelConfig, mdata, ("model",), src)
    tdata = data.get("train")
    if tdata is None or isinstance(tdata, dict):          # the task's own training defaults
        tdata = {**TASKS[task.name].default_train, **(tdata or {})}
    train = build_dataclass(TrainConfig, tdata, ("train",), src)
    known = TASKS[task.name].evaluator_names
    for i, ev in enumerate(train.evaluators):
        if ev not in known:
            raise src.error(("train", "evaluators", i), show(ev), f"an evaluator of {task.name}: " + ", ".join(known),
                            did_you_mean(ev, known))
    shape = model_shape(model, task.io())
    subcircuits = _subcircuits(data.get("subcircuits"), src, shape)
    interventions = tuple(_intervention(item, ("interventions", i), src, shape, subcircuits, train.steps)
                          for i, item in enumerate(_list(data.get("interventions"), ("interventions",), src)))
    for i, iv in enumerate(interventions):
        sc = subcircuits.get(iv.target)
        if sc is not None and sc.select is not None and sc.select.run == "self":
            raise src.error(("interventions", i, iv.kind), show(iv.target),
                            "a subcircuit whose heads are known before training",
                            f"subcircuits.{iv.target}.select.run: self chooses heads at each evaluation, so it "
                            "can be used in probes only; name a finished run instead")
    measure = _measures(data.get("measure"), src, task.name)
    phases = _phases(data.get("phases"), src, TASKS[task.name].default_phases(task.options))
    probes = _probes(data.get("probes"), src, shape, subcircuits, train.steps)
    recipe = Recipe(name, seeds, model, task, train, subcircuits, interventions, measure, phases, probes, src)
    if data.get("phases") is None:           # the task's default rules, for the columns this recipe measures
        recipe = replace(recipe, phases=outputs.measured_phases(recipe))
    outputs.check(recipe)
    return recipe


def _probes(value, src, shape, subcircuits, steps) -> dict[str, tuple[Intervention, ...]]:
    """Evaluation-only interventions: name → list; measured as extra columns `<column>@<name>`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(("probes",), show(value), "a mapping of probe names to lists of interventions")
    out = {}
    for name, items in value.items():
        path = ("probes", name)
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise src.error(path, show(name), "a probe name of letters, digits and _")
        if isinstance(items, dict):
            items = [items]
        ivs = tuple(_intervention(it, path + (i,), src, shape, subcircuits, steps)
                    for i, it in enumerate(_list(items, path, src)))
        for i, iv in enumerate(ivs):
            if iv.kind == "freeze":
                raise src.error(path + (i, "freeze"), "a freeze in a probe", "clamps and ablations (probes only "
                                "evaluate; nothing is trained under them)")
        out[name] = ivs
    return out


def _list(value, path, src) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise src.error(path, show(value), "a list")
    return value


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


def _check_name(text, path, src, shape, kind) -> list[S.Site]:
    try:
        return S.expand(text, shape, kind)
    except InputError as e:
        hint = e.hint
        other = "parameter" if kind == "activation" else "activation"
        try:
            S.expand(text, shape, other)
            hint = (f"{text} is {'a parameter' if other == 'parameter' else 'an activation'}; "
                    + ("freeze takes parameters, e.g. blocks.0.attn.W_Q[0]" if kind == "parameter"
                       else "clamp and ablate take activation sites, e.g. blocks.0.attn.hook_pattern[0]"))
        except InputError:
            pass
        raise src.error(path, e.found, e.expected, hint) from None


def _subcircuits(value, src, shape) -> dict[str, Subcircuit]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(("subcircuits",), show(value), "a mapping of names to {sites: [...], params: [...]}")
    out = {}
    for name, body in value.items():
        path = ("subcircuits", name)
        if S._PATH_RE.match(str(name)) and "." in str(name):
            raise src.error(path, show(name), "a subcircuit name without dots",
                            "dots are for site names; use e.g. prev_token")
        sc = build_dataclass(Subcircuit, body, path, src)
        for key, kind in (("sites", "activation"), ("params", "parameter")):
            for i, s in enumerate(getattr(sc, key)):
                got = _check_name(s, path + (key, i), src, shape, kind)
                if sc.select is not None:
                    bad = [g for g in got if g.heads is not None or not g.info.per_head]
                    if bad or "[" in s:
                        raise src.error(path + (key, i), show(s), "a per-head name without a head selection "
                                        "(the heads come from select)", f"write {s.split('[')[0]}")
                    if any(g.info.layer != sc.select.layer for g in got):
                        raise src.error(path + (key, i), show(s), f"a name in layer {sc.select.layer} "
                                        "(select.layer)")
        if sc.select is not None and sc.select.layer >= shape.layers:
            raise src.error(path + ("select", "layer"), str(sc.select.layer),
                            f"a layer 0..{shape.layers - 1}")
        if not sc.sites and not sc.params:
            raise src.error(path, "an empty subcircuit", "at least one site or parameter")
        out[str(name)] = sc
    return out


def _windows(value, path, src, steps: int) -> tuple[tuple[int, int], ...]:
    """[a, b] or [[a, b], [c, d], ...]; 'end' means the run's last step; half-open, in range."""
    if value is None:
        return ((0, steps),)
    if not isinstance(value, list) or not value:
        raise src.error(path, show(value), "[start, end] or a list of them, e.g. [0, end] or [[0, 500], [1000, end]]")
    pairs = value if isinstance(value[0], list) else [value]
    out = []
    for i, pair in enumerate(pairs):
        p = path + ((i,) if pairs is value else ())
        if not isinstance(pair, list) or len(pair) != 2:
            raise src.error(p, show(pair), "[start, end] (two steps; half-open)")
        a, b = (_step(x, p + (j,), src, steps) for j, x in enumerate(pair))
        if a >= b:
            raise src.error(p, show(pair), "start < end (windows are half-open [start, end))",
                            f"[{a}, {a + 1}] is the single step {a}" if a == b else "")
        if b > steps:
            raise src.error(p, show(pair), f"a window inside the run's {steps} steps",
                            f"write [{a}, end] to run to the last step")
        out.append((a, b))
    out.sort()
    for (a0, b0), (a1, b1) in zip(out, out[1:]):
        if a1 < b0:
            raise src.error(path, show(value), "windows that do not overlap",
                            f"merge [{a0}, {b0}] and [{a1}, {b1}] into [{a0}, {max(b0, b1)}]")
    return tuple(out)


def _step(x, path, src, steps) -> int:
    if x == "end":
        return steps
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not x.is_integer()):
        raise src.error(path, show(x), "a step (an integer >= 0) or 'end'",
                        did_you_mean(str(x), ["end"]) if isinstance(x, str) else "")
    if x < 0:
        raise src.error(path, show(x), "a step >= 0")
    return int(x)


def _intervention(item, path, src, shape, subcircuits, steps) -> Intervention:
    if not isinstance(item, dict):
        raise src.error(path, show(item), "a mapping like {clamp: SITE, to: SOURCE} or {freeze: PARAM}")
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        found = "no clamp/ablate/freeze key" if not kinds else "both " + " and ".join(kinds)
        close = [did_you_mean(str(k), KINDS) for k in item if k not in KINDS]
        raise src.error(path, found, "exactly one of clamp, ablate, freeze",
                        next((c for c in close if c), ""))
    kind = kinds[0]
    target = item[kind]
    if not isinstance(target, str):
        raise src.error(path + (kind,), show(target), "a subcircuit name or a site name")
    common = {kind, "steps", "name"} | ({"preserve"} if kind != "freeze" else set())
    source_key = {"clamp": "to", "ablate": "how", "freeze": None}[kind]
    source = None
    options = None
    if source_key:
        default = "zero" if kind == "ablate" else None
        source = item.get(source_key, default)
        if source is None:
            raise src.error(path, f"no {source_key!r} key", f"{source_key}: a value source, one of "
                            + ", ".join(sorted(VALUES)))
        if isinstance(source, dict) and len(source) == 1:     # to: {previous_token: {strength: 0.9}}
            (source, inline), = source.items()
            if inline is not None and not isinstance(inline, dict):
                raise src.error(path + (source_key, str(source)), show(inline),
                                f"the options of {str(source)!r} as a mapping, e.g. {{strength: 0.9}}")
            item = {**item, **(inline or {}), source_key: source}
        try:
            cls = get_value(source, ablation=(kind == "ablate"))
        except InputError as e:
            raise src.error(path + (source_key,), e.found, e.expected, e.hint) from None
        common.add(source_key)
        opt_keys = {k: v for k, v in item.items() if k not in common}
        options = _source_options(cls, opt_keys, path, src, kind)
    else:
        options = _source_options(FreezeOptions, {k: v for k, v in item.items() if k not in common}, path, src,
                                  kind)
    _check_target(target, kind, cls(options) if source_key else None, path, src, shape, subcircuits)
    windows = _windows(item.get("steps"), path + ("steps",), src, steps)
    name = build(str, item.get("name", ""), path + ("name",), src)
    preserve = build(tuple[str, ...], item.get("preserve", []), path + ("preserve",), src)
    for i, p in enumerate(preserve):
        if p not in PRESERVE:
            raise src.error(path + ("preserve", i), show(p), "patterns or values (of later attention layers)",
                            did_you_mean(str(p), PRESERVE))
    return Intervention(kind, target, source, options, windows, name, tuple(dict.fromkeys(preserve)))


def _source_options(cls, keys: dict, path, src, kind):
    """The options of a value source (`cls.Options`) or of a freeze (`cls` is FreezeOptions)."""
    import dataclasses
    opts_cls = cls if cls is FreezeOptions else cls.Options
    known = {f.name for f in dataclasses.fields(opts_cls)}
    for k in keys:
        if k not in known:
            extra = {"steps", "name"} | ({"to" if kind == "clamp" else "how", "preserve"} if kind != "freeze" else set())
            allowed = sorted(known | extra)
            whose = "freeze" if cls is FreezeOptions else cls.name
            raise src.error(path + (k,), f"unknown key {k!r}",
                            f"one of {', '.join(allowed)} (options of {whose}: {', '.join(sorted(known)) or 'none'})",
                            did_you_mean(str(k), allowed))
    return build_dataclass(opts_cls, keys, path, src)


def _check_target(target, kind, source, ipath, src, shape, subcircuits) -> None:
    """The target names a subcircuit with the right parts, or a site/parameter of the model."""
    path = ipath + (kind,)
    want = "parameter" if kind == "freeze" else "activation"
    if target in subcircuits:
        sc = subcircuits[target]
        names = sc.params if kind == "freeze" else sc.sites
        if not names:
            part = "params" if kind == "freeze" else "sites"
            raise src.error(path, f"subcircuit {target!r} with no {part}",
                            f"a subcircuit with {part} to {kind}",
                            f"add {part} to subcircuits.{target}")
        resolved = [s for n in names for s in S.expand(n, shape, want)]
        if sc.select is not None:                 # heads unknown yet: check the layout with every head
            resolved = [S.Site(s.name, tuple(range(shape.heads)), s.info) for s in resolved]
    else:
        if "." not in target and "[" not in target and not target.startswith("hook_"):
            hint = did_you_mean(target, subcircuits) or ("no subcircuits are defined" if not subcircuits else "")
            raise src.error(path, show(target), f"a subcircuit name ({', '.join(subcircuits) or 'none defined'}) "
                            f"or a {'parameter' if want == 'parameter' else 'site'} name", hint)
        resolved = _check_name(target, path, src, shape, want)
    if source is not None:
        bad = [s for s in resolved if not source.applies_to(s)]
        if bad:
            raise src.error(path, show(str(bad[0])), f"a site {source.name} applies to ("
                            + ", ".join(f"*.{x}" if x != "*" else "any activation" for x in source.sites) + ")")
        for s in resolved:
            problem = source.check(s, shape)
            if problem:
                key, found, expected = problem
                raise src.error(ipath + (key,), found, expected)


def _measures(value, src, task: str) -> tuple[str, ...]:
    if value is None:
        return TASKS[task].default_measures
    items = build(tuple[str, ...], value, ("measure",), src)
    for i, m in enumerate(items):
        if m not in MEASURES:
            raise src.error(("measure", i), show(m), "a measure: one of " + ", ".join(MEASURES),
                            did_you_mean(m, MEASURES))
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
            if k not in PHASE_RULES:
                raise src.error(path + (k,), f"unknown rule {k!r}", "one of " + ", ".join(PHASE_RULES),
                                did_you_mean(str(k), PHASE_RULES))
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
    from .phases import PLATEAU, PLATEAU_DOC
    keys = ("frac",) + tuple(PLATEAU)
    for k, x in v.items():
        if k not in keys:
            raise src.error(path + (k,), f"unknown key {k!r}", "one of " + ", ".join(keys), did_you_mean(str(k), keys))
        x = build(float, x, path + (k,), src)
        if k in ("frac", "flat", "dwell", "drop") and not 0 < x < 1:
            raise src.error(path + (k,), show(v[k]), f"a fraction in (0, 1) ({PLATEAU_DOC.get(k, 'of the way from the plateau to the final level')})")
        if k == "sharp" and not x >= 1:
            raise src.error(path + (k,), show(v[k]), "a factor >= 1 (" + PLATEAU_DOC["sharp"] + ")")
    if "frac" not in v:
        raise src.error(path, "no frac", "frac: the fraction of the way from the plateau to the final level, e.g. 0.5")


# ---------------------------------------------------------------------------------------
# Writing back


def recipe_to_dict(r: Recipe) -> dict:
    """The resolved recipe as plain data; `recipe_from_data(recipe_to_dict(r)) == r`."""
    def windows(ws):
        return [list(w) for w in ws] if len(ws) != 1 else list(ws[0])

    def intervention(iv: Intervention) -> dict:
        d: dict = {iv.kind: iv.target}
        if iv.kind == "clamp":
            d["to"] = iv.source
        elif iv.kind == "ablate":
            d["how"] = iv.source
        if iv.options is not None:
            d.update(unbuild(iv.options))
        d["steps"] = windows(iv.windows)
        if iv.name:
            d["name"] = iv.name
        if iv.preserve:
            d["preserve"] = list(iv.preserve)
        return d

    def subcircuit(sc: Subcircuit) -> dict:
        d = {"sites": list(sc.sites), "params": list(sc.params)}
        if sc.select is not None:
            d["select"] = unbuild(sc.select)
        return d

    return {
        "name": r.name,
        "seeds": list(r.seeds),
        "model": unbuild(r.model),
        "task": {"name": r.task.name, **unbuild(r.task.options)},
        "train": unbuild(r.train),
        "subcircuits": {k: subcircuit(v) for k, v in r.subcircuits.items()},
        "interventions": [intervention(iv) for iv in r.interventions],
        "measure": list(r.measure),
        "phases": {k: dict(v) for k, v in r.phases.items()},
        **({"probes": {k: [intervention(iv) for iv in v] for k, v in r.probes.items()}} if r.probes else {}),
    }


def dump_recipe(r: Recipe) -> str:
    return dump_yaml(recipe_to_dict(r))


def with_overrides(r: Recipe, overrides: Sequence[str]) -> Recipe:
    """A new Recipe: `r` with 'key.path=value' overrides applied and everything re-checked."""
    return recipe_from_data(recipe_to_dict(r), Source(file=r.source.file), overrides, r.name)
