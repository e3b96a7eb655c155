"""The measure interface: metric columns computed at every evaluation, built-ins and plug-ins alike.

Model layer (measures/; the built-in measures are the other modules of this folder, each a `Measure`
class registered when measures/ is imported; docs/science.md §4 has their definitions). A measure
declares before the run which columns it writes (`columns`), what it reads (`record`: sites of the
'train' evaluator's forward; `repeats`: sites of the task's repeated-segment forward), whether the
task and model can give it what it needs (`unavailable`), and computes them from forwards already
run (`compute`). One instance per run: `task` and `shape` are set on it before its first compute.

    loss, accuracy                          every evaluator (columns.evaluator_column)
    <measure>/<site>[h]                     per head: `head_site` names the site its columns carry
    anything else a measure declares        position_accuracy/pos<t>, {k,q,v}_composition/...

`evaluate` runs the forwards an evaluation needs (`forwards`) through an Intervener and returns
one flat row of columns; ensembles run the forwards of many members together and call `score`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..names import columns as C
from ..names.registry import register
from ..names.sites import ModelShape, head_name
from ..tasks import Batch

REPEATS = "(repeated segments)"      # the key of the induction-score forward in `outputs` and `batches`
Outputs = dict[str, tuple[Tensor, dict[str, Tensor]]]     # forward key → (logits, recorded site values)
Todo = list[tuple[str, Batch, list[str]]]                  # (forward key, batch, sites to record)


class Measure:
    """A progress measure: subclass, set `name` (what a recipe's `measure:` lists), declare what it
    reads and writes, implement `compute`; register with `@register_measure`. Its columns must be
    known before the run (`columns`), so phase rules, stop rules, expectations and the graph that
    name them are checked when the recipe loads."""

    name: ClassVar[str]
    doc: ClassVar[str] = ""
    record: ClassVar[tuple[str, ...]] = ()     # sites recorded on the 'train' evaluator's forward ('{L}': each layer)
    repeats: ClassVar[tuple[str, ...]] = ()    # sites recorded on the task's repeated segments (needs the task's)
    head_site: ClassVar[str | None] = None     # per head: the site its columns carry ('{L}' each layer); select.by
    weights: ClassVar[bool] = False            # computed from the weights alone (no evaluator needed)
    reads: ClassVar[tuple[str, ...]] = ()      # parameters it reads ('{L}': each layer); a model without them can't
    role: ClassVar[float | None] = 0.5         # per head: the score above which `clamp discover` says a head took
                                               # this role (a role of the measure's name); None: not a role

    task: Any = None                           # the run's Task (set by clamp before compute)
    shape: ModelShape | None = None            # the model's shape (set by clamp)

    @classmethod
    def unavailable(cls, task: type, options: Any, shape: ModelShape) -> str:
        """Why runs of this task (its class and options) on this model cannot produce the measure ('' if they can)."""
        return ""

    @classmethod
    def columns(cls, shape: ModelShape, evaluators: tuple[str, ...]) -> list[str]:
        """The columns this measure writes for a model of `shape` with these evaluators."""
        if cls.head_site is not None:
            if not cls.weights and "train" not in evaluators:
                return []
            return [head_column(cls.name, L, h) for L in range(shape.layers) for h in range(shape.heads)]
        return [cls.name]

    @classmethod
    def sites(cls, shape: ModelShape, templates: tuple[str, ...] | None = None) -> list[str]:
        """`record` (or `templates`) with '{L}' filled in for every layer."""
        out: list[str] = []
        for t in cls.record if templates is None else templates:
            for s in ([t.format(L=L) for L in range(shape.layers)] if "{L}" in t else [t]):
                if s not in out:
                    out.append(s)
        return out

    def summary(self) -> dict:
        """Extra fields for summary.json (once per run)."""
        return {}

    def compute(self, outputs: Outputs, batches: dict[str, Batch], seam) -> dict[str, float]:
        """One value per column: `outputs` holds each evaluator's (logits [batch, pos, n_out], recorded
        sites: `record` on 'train', `repeats` on REPEATS), `batches` its batch, `seam` the model
        (seam.weight(name) reads a parameter) with this step's interventions applied to the outputs,
        not to the weights."""
        raise NotImplementedError


MEASURES: dict[str, type[Measure]] = {}
MEASURE_PLUGINS = MEASURES           # the one registry (built-ins and plug-ins); the old name still reads it


def register_measure(cls: type[Measure] | None = None, *, replace: bool = False):
    """`@register_measure` (or `@register_measure(replace=True)`): a name taken by another measure,
    clamp's or a plug-in's, is refused."""
    def add(c: type[Measure]) -> type[Measure]:
        register(MEASURES, "measure", c.name, c, replace)
        return c
    return add if cls is None else add(cls)


def head_site(measure: str, layer: int) -> str:
    """The site a per-head measure's columns carry at `layer` (a plug-in without `head_site`: the pattern)."""
    cls = MEASURES.get(measure)
    template = cls.head_site if cls is not None and cls.head_site else "blocks.{L}.attn.hook_pattern"
    return template.format(L=layer)


def head_column(measure: str, layer: int, head: int) -> str:
    """`<measure>/<its site at layer>[head]`, e.g. prev_token_score/blocks.0.attn.hook_pattern[3]."""
    return C.measure_column(measure, head_name(head_site(measure, layer), (head,)))


def per_head(measure: str) -> bool:
    cls = MEASURES.get(measure)
    return cls is not None and cls.head_site is not None


def instances(names: Iterable[str], task: Any, shape: ModelShape) -> dict[str, Measure]:
    """One instance of each named measure for a run (its task and shape set)."""
    out = {}
    for n in names:
        m = MEASURES[n]()
        m.task, m.shape = task, shape
        out[n] = m
    return out


# ---------------------------------------------------------------------------------------
# An evaluation


def forwards(evaluators: dict[str, Batch], repeats: Batch | None, measures: Iterable[str],
             shape: ModelShape) -> Todo:
    """The forward passes an evaluation needs: (key, batch, sites to record) for each."""
    classes = [MEASURES[m] for m in measures if m in MEASURES]
    record: list[str] = []
    rep: list[str] = []
    for cls in classes:
        record += [s for s in cls.sites(shape) if s not in record]
        rep += [s for s in cls.sites(shape, cls.repeats) if s not in rep]
    out = [(name, batch, record if name == "train" else []) for name, batch in evaluators.items()]
    if rep and repeats is not None:
        out.append((REPEATS, repeats, rep))
    return out


def needs_repeats(measures: Iterable[str]) -> bool:
    return any(MEASURES[m].repeats for m in measures if m in MEASURES)


def run_forwards(intervener, todo: Todo, forward=None) -> Outputs:
    """Each forward of `todo` through `intervener` (or `forward`, the same function compiled: train.compile),
    recording its sites."""
    outputs: Outputs = {}
    for key, batch, record in todo:
        with intervener.recording(record) as rec:
            outputs[key] = ((forward or intervener.forward)(batch), rec)
    return outputs


def score(outputs: Outputs, todo: Todo, measures: dict[str, Measure], seam) -> dict[str, float]:
    """The columns of `measures` (instances) from forwards already run (`forwards` lists them)."""
    row: dict[str, float] = {}
    batches = {key: batch for key, batch, _ in todo}
    evs = tuple(k for k in batches if k != REPEATS)
    for name, m in measures.items():
        got = m.compute(outputs, batches, seam)
        allowed = set(type(m).columns(m.shape, evs)) if m.shape is not None else set(got)
        extra = sorted(set(got) - allowed)
        if extra:
            raise ValueError(f"measure {name!r} wrote columns its columns() does not declare: {', '.join(extra[:3])}")
        row.update({k: float(v) for k, v in got.items()})
    return row


@torch.no_grad()
def evaluate(intervener, evaluators: dict[str, Batch], repeats: Batch | None, measures: dict[str, Measure],
             shape: ModelShape, outputs: Outputs | None = None) -> dict[str, float]:
    """One row of metric columns. The forwards run here through `intervener` unless their `outputs`
    are given (an ensemble runs its members' forwards together: training/ensemble.py)."""
    todo = forwards(evaluators, repeats, measures, shape)
    if outputs is None:
        outputs = run_forwards(intervener, todo)
    return score(outputs, todo, measures, intervener.seam)


Scorer = Callable[[Tensor, Batch], "tuple[float, float | None]"]     # (logits, batch) → (loss, accuracy)
