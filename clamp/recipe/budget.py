"""What a recipe will cost before anything is allocated: parameters, activations, task data, metrics.

Sits in the recipe layer (pure arithmetic on a checked Recipe; no torch). `estimate(recipe)`
gives an upper-side estimate in bytes of the peak memory of one run:

    parameters   values, gradients, two Adam moments, per-element step counts and freeze
                 snapshots: 6 float32 copies of every parameter
    training     the activations one training step keeps for backward (every site of every
                 layer, attention scores and patterns [batch, head, pos, pos] three times, the
                 logits and their softmax), doubled for the backward pass, doubled again when
                 a `preserve` makes each forward two passes, plus a value tensor per clamped site
    evaluation   one evaluator's forward on `eval_size` sequences without gradients, with every
                 layer's pattern recorded for the head measures
    task data    the task's own estimate (its evaluation sets, prototypes, label sets, ...)
    metrics      the rows kept in memory: evaluations x metric columns
    process      240 MiB for Python, torch and clamp imported, 128 MiB for torch's first allocations

`check(recipe, limit)` raises an InputError located at the key that dominates, with the
estimate in the message, when the total is above `limit` (default: half of this machine's
memory). `clamp run|bench|plan --max-memory SIZE|none` lifts or moves the limit on purpose.
The estimate is checked against the measured peak resident memory of whole processes
(`python benchmarks/memory.py`, benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ..measures import MEASURES
from ..tasks import TASKS
from .types import Recipe

F32 = 4
PROCESS = 240 * 1024 ** 2       # a process with Python, torch and clamp imported: measured 234 MiB (2.13 CPU)
RUNTIME = 128 * 1024 ** 2       # torch's own first allocations (kernels, thread pools): measured ~100 MiB


@dataclass(frozen=True)
class Estimate:
    params: int                 # number of parameters
    param_bytes: int
    train_bytes: int
    eval_bytes: int
    task_bytes: int
    metrics_bytes: int

    @property
    def total(self) -> int:
        return (PROCESS + RUNTIME + self.param_bytes + max(self.train_bytes, self.eval_bytes) + self.task_bytes
                + self.metrics_bytes)

    def text(self) -> str:
        return (f"~{human(self.total)} (the process {human(PROCESS + RUNTIME)}, "
                f"parameters {human(self.param_bytes)} for {self.params:,} weights, "
                f"training activations {human(self.train_bytes)}, evaluation {human(self.eval_bytes)}, "
                f"task data {human(self.task_bytes)}, metrics {human(self.metrics_bytes)})")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def parse_size(text: str) -> float:
    """'12G', '512MiB', '2e9', 'none' (no limit) → bytes; ValueError for anything else."""
    t = text.strip().lower()
    if t in ("none", "inf", "unlimited"):
        return math.inf
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgtp]?)(i?b?)", t)
    if not m:
        raise ValueError(text)
    out = float(m.group(1)) * 1024 ** "bkmgtp".index(m.group(2) or "b")
    if not math.isfinite(out):
        raise ValueError(text)
    return out


def default_limit() -> float:
    """Half of this machine's physical memory (or 8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2
    except (ValueError, OSError, AttributeError):
        return 8 * 1024 ** 3


def n_params(recipe: Recipe) -> int:
    """The model's parameter count: by formula for the built-in transformer, counted on the module's
    skeleton (meta device: no memory) for every other family."""
    s = recipe.shape()
    if s.family != "builtin":
        from ..models.seam import skeleton
        return sum(p.numel() for p in skeleton(s).parameters())
    d, H, e, L = s.d_model, s.heads, s.d_head, s.layers
    n = s.vocab * d + s.vector_dim * d + (s.n_ctx * d if s.pos == "learned" else 0)
    per_layer = 4 * H * d * e + (2 * d if s.norm == "pre" else 0)
    if not s.attn_only:
        per_layer += 2 * d * s.d_mlp + s.d_mlp + d + (2 * d if s.norm == "pre" else 0)
    n += L * per_layer + (2 * d if s.norm == "pre" else 0) + d * s.n_out + s.n_out
    return n


def _forward_bytes(recipe: Recipe, B: int) -> int:
    """float32 activations of one forward pass over B sequences, every site kept."""
    s = recipe.shape()
    T, d, H, e = s.n_ctx, s.d_model, s.heads, s.d_head
    per_layer = 8 * B * T * d + 6 * B * T * H * e + 3 * B * H * T * T
    if not s.attn_only:
        per_layer += 3 * B * T * s.d_mlp + 2 * B * T * d
    return F32 * (s.layers * per_layer + 3 * B * T * s.n_out + 2 * B * T * d)


def estimate(recipe: Recipe) -> Estimate:
    t = recipe.train
    s = recipe.shape()
    n = n_params(recipe)
    param_bytes = 6 * F32 * n
    preserve = any(iv.preserve for ivs in (recipe.interventions, *recipe.probes.values()) for iv in ivs)
    clamped = sum(1 for iv in recipe.interventions if iv.kind != "freeze")
    site_bytes = F32 * t.batch * max(s.n_ctx * max(s.d_model, s.heads * s.d_head, s.n_out),
                                     s.heads * s.n_ctx * s.n_ctx)
    train = 2 * _forward_bytes(recipe, t.batch) * (2 if preserve else 1) + 2 * clamped * site_bytes
    heads = any(MEASURES[m].record or MEASURES[m].repeats for m in recipe.measure if m in MEASURES)
    one_layer = _forward_bytes(replace_layers(recipe), t.eval_size)
    recorded = F32 * t.eval_size * s.layers * s.heads * s.n_ctx * s.n_ctx * (3 if heads else 0)
    evaluation = one_layer * (2 if preserve else 1) + recorded
    task = TASKS[recipe.task.name].data_bytes(recipe.task.options, t.batch, t.eval_size)
    n_evals = count_evals(recipe)
    evs = TASKS[recipe.task.name].evaluators_of(recipe.task.options)
    columns = 8 + len(recipe.probes) * 10 + sum(len(MEASURES[m].columns(s, evs)) for m in recipe.measure
                                                 if m in MEASURES)
    metrics = 120 * columns * n_evals
    return Estimate(n, param_bytes, int(train), int(evaluation), int(task), int(metrics))


def replace_layers(recipe: Recipe) -> Recipe:
    """The recipe with one layer (the evaluation keeps only one layer's activations at a time)."""
    from dataclasses import replace
    return replace(recipe, model=replace(recipe.model, layers=1))


def count_evals(recipe: Recipe) -> int:
    """Evaluations of a full run (the schedule's, plus the first and last), without listing them."""
    t = recipe.train
    ee = t.eval_every if not isinstance(t.eval_every, int) else ((0, t.eval_every),)
    n = 2
    for i, (a, every) in enumerate(ee):
        b = min(ee[i + 1][0] if i + 1 < len(ee) else t.steps, t.steps)
        if b > a:
            n += -(-(b - a) // every)
    return n


def members_that_fit(recipe: Recipe, limit: float | None = None) -> int:
    """How many runs of this recipe one ensemble process can hold under `limit` bytes: the process,
    the runtime and one evaluation chunk once, each member's parameters, training activations,
    task data and metrics K times (at least 1)."""
    est = estimate(recipe)
    limit = default_limit() if limit is None else limit
    member = est.param_bytes + est.train_bytes + est.task_bytes + est.metrics_bytes
    if math.isinf(limit):
        return 1 << 30
    return max(1, int((limit - PROCESS - RUNTIME - est.eval_bytes) // max(member, 1)))


def check(recipe: Recipe, limit: float | None = None) -> Estimate:
    """The estimate; InputError at the dominating key when it is above `limit` bytes."""
    est = estimate(recipe)
    limit = default_limit() if limit is None else limit
    if est.total <= limit:
        return est
    t = recipe.train
    parts = {("model",): (est.param_bytes, f"parameters {human(est.param_bytes)} for {est.params:,} weights"),
             ("train", "batch"): (est.train_bytes,
                                  f"training activations {human(est.train_bytes)} at batch {t.batch:,}"),
             ("train", "eval_size"): (est.eval_bytes,
                                      f"evaluation {human(est.eval_bytes)} at eval_size {t.eval_size:,}"),
             ("task",): (est.task_bytes, f"task data {human(est.task_bytes)}"),
             ("train", "eval_every"): (est.metrics_bytes,
                                       f"metrics {human(est.metrics_bytes)} over {count_evals(recipe):,} evaluations")}
    key = max(parts, key=lambda k: parts[k][0])
    per_seq = _forward_bytes(recipe, 1)
    if key in (("train", "batch"), ("train", "eval_size")) and 32 * per_seq > limit:    # the model is too wide
        key = ("model",)
        parts[key] = (0, f"activations {human(per_seq)} per sequence")
    raise recipe.source.error(key, f"a run needing ~{human(est.total)} of memory ({parts[key][1]})",
                              f"at most {human(limit)} (half this machine's memory unless --max-memory says)",
                              "make it smaller, or pass --max-memory SIZE|none to lift the limit on purpose")
