"""Recipe types: what a checked recipe is, and writing one back as YAML.

Recipe layer (pure: no files, no torch). A `Recipe` is frozen data: the model, task and
training settings, subcircuits, interventions (clamp/ablate/freeze with windows), measures,
phase rules and probes, each a dataclass whose fields carry their defaults, bounds and docs
(`schema.opt`). spec.py builds one from YAML, checking every key; `recipe_to_dict` /
`dump_recipe` write it back (the round trip is exact), which is how a plan, a run directory's
recipe.yaml and a suite's variants are printed, saved and diffed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..names import sites as S
from ..names.schema import non_negative, opt, positive, unbuild
from ..names.yamlio import Source, dump_yaml
from ..tasks import TASKS, TaskIO

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
    embed_std: float = opt(0.02, check=positive, doc="std of the token (and learned position) embeddings at init, as Singh et al. and nanoGPT")  # noqa: E501
    backend: Literal["native", "nnsight"] = opt("native", doc="how clamp reaches the model's sites: its own hook "
                                                 "points, or nnsight traces (same numbers, slower)")
    family: str = opt("builtin", doc="builtin (clamp's transformer) or a transformers family (models/hf.py: its "
                      "model from config, through nnsight)")
    config: dict[str, Any] = opt(factory=dict, doc="a foreign family's other config keys (e.g. GPT2Config's "
                                 "activation_function); shape keys are layers, heads, d_model, d_mlp")
    module: str = opt("", doc="a user's model: '<plug-in module>:<factory>' from a module plugins: lists")
    options: dict[str, Any] = opt(factory=dict, doc="keyword arguments for the user's factory (model.module)")

    def validate(self):
        if self.d_head == 0 and self.d_model % self.heads:
            return ("d_head", f"set (d_model {self.d_model} is not divisible by heads {self.heads})")
        if self.pos == "rope" and self.head_width() % 2 and self.family == "builtin" and not self.module:
            return ("pos", "'learned' or 'none' (RoPE needs an even d_head)")
        return None

    def head_width(self) -> int:
        return self.d_head or self.d_model // self.heads

    def unused_keys(self) -> tuple[str, ...]:
        """Keys that mean nothing for this kind of model (a recipe may not set them; dumps leave them out)."""
        if self.module:
            return BUILTIN_ONLY + ("family", "config")
        if self.family != "builtin":
            return BUILTIN_ONLY + ("d_head", "module", "options")
        return ("config", "module", "options")


# the built-in transformer's own architecture keys (a foreign model has its own architecture)
BUILTIN_ONLY = ("attn_only", "norm", "pos", "embed_std", "backend")


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
    evaluator_every: dict[str, int] = opt(factory=dict, doc="an evaluator run only at evaluations whose step is a "
                                          "multiple of N (and at the first, the last and a stop), e.g. "
                                          "{test_relabel: 250}; the others run at every evaluation")
    checkpoint_every: int = opt(0, check=non_negative, doc="checkpoint every N steps (0: only the last)")
    probe_every: int = opt(1, check=non_negative, doc="evaluate probes every N-th evaluation (0: only the last)")
    stop: dict[str, dict[str, float]] = opt(factory=dict, doc="stop at the first evaluation meeting every rule, "
                                            "e.g. {loss: {below: 0.05}}")
    threads: int = opt(1, check=positive, doc="torch threads per run")
    device: Literal["cpu", "cuda", "auto"] = opt("cpu", doc="where the run trains: cpu, cuda, or auto (cuda when "
                                                 "present)")
    compile: bool = opt(False, doc="compile the forward passes with their interventions (torch.compile): once "
                                   "per window of active interventions; eager where compilation fails")

    def validate(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            return ("betas", "two numbers in [0, 1), e.g. [0.9, 0.999]")
        for _col, rule in self.stop.items():
            if not rule or any(k not in ("below", "above") for k in rule):
                return ("stop", "{column: {below: x}} or {column: {above: x}}")
        if any(not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in self.evaluator_every.values()):
            return ("evaluator_every", "{evaluator: a positive number of steps}")
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




def _per_head(measure: str) -> str | None:
    from ..measures import MEASURES, per_head
    # clamp's per-head measures, and any plug-in's (outputs.check refuses one without per-head columns)
    known = tuple(m for m, c in MEASURES.items() if per_head(m) or not c.__module__.startswith("clamp."))
    if measure in known:
        return None
    from ..names.errors import did_you_mean
    hint = did_you_mean(measure, known)
    return "a per-head measure: one of " + ", ".join(known) + (f"; {hint}" if hint else "")


@dataclass(frozen=True)
class Selection:
    """Heads chosen by measurement: the heads of `layer` ranked or thresholded by a per-head measure."""

    layer: int = opt(0, check=lambda v: None if v >= 0 else "a layer >= 0", doc="the layer whose heads are chosen")
    by: str = opt("prev_token_score", check=lambda v: _per_head(v), doc="the per-head measure (clamp's, or a "
                  "plug-in's that declares `head_site`)")
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
    plugins: tuple[str, ...] = ()              # plug-ins to import: absolute paths, or installed module names
    source: Source = field(default_factory=Source, compare=False, repr=False)

    def shape(self) -> S.ModelShape:
        return model_shape(self.model, self.task.io(), self.plugins)


def model_shape(m: ModelConfig, io: TaskIO, plugins: tuple[str, ...] = ()) -> S.ModelShape:
    """The recipe's model keys and the task's sizes as a ModelShape, completed by its family
    (sites.family_shape: e.g. GPT-2 has MLPs, LayerNorm and learned positions whatever the keys say)."""
    if m.module:
        family, config = "module", user_config(m.module, m.options, plugins)
    else:
        family, config = m.family, tuple(sorted(m.config.items()))
    base = S.ModelShape(layers=m.layers, heads=m.heads, d_model=m.d_model, d_head=m.head_width(),
                        embed_std=m.embed_std, attn_only=m.attn_only, d_mlp=m.d_mlp or 4 * m.d_model, norm=m.norm,
                        pos=m.pos, vocab=io.vocab, n_out=io.n_out, n_ctx=io.n_ctx, vector_dim=io.vector_dim,
                        family=family, backend="nnsight" if family != "builtin" else m.backend, config=config)
    return S.family_shape(base)


def user_config(module: str, options: dict, plugins: tuple[str, ...]) -> tuple:
    """ModelShape.config of a user's module (hashable: options as canonical JSON)."""
    return (("module", module), ("options", json.dumps(options, sort_keys=True)), ("plugins", tuple(plugins)))


TOP_KEYS = ("name", "seeds", "plugins", "model", "task", "train", "subcircuits", "interventions", "measure", "phases",
            "probes")
PRESERVE = ("patterns", "values")
PHASE_RULES = ("below", "above", "relative", "band", "logistic", "max_slope")


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
        **({"plugins": list(r.plugins)} if r.plugins else {}),
        "model": {k: v for k, v in unbuild(r.model).items() if k not in r.model.unused_keys()},
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
