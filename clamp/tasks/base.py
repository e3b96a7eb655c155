"""Task types: what a task's sequences look like, the batches it makes, and the registry.

Model layer (under recipes). `Task` is the base class a task subclasses; `TASKS` the registry
that `@register_task` fills and recipes name. Docs of the batch fields: tasks/__init__.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..names.errors import InputError, did_you_mean, show
from ..names.registry import decorator


@dataclass(frozen=True)
class TaskIO:
    """Sequence facts the model is built from."""

    vocab: int              # token ids are in [0, vocab)
    n_out: int              # logits per position
    n_ctx: int              # sequence length
    vector_dim: int = 0     # >0 when some positions carry vectors


@dataclass
class Batch:
    tokens: Tensor                          # [batch, pos] long
    targets: Tensor                         # [batch, pos] long, -100 where no loss
    vectors: Tensor | None = None           # [batch, pos, vector_dim] float
    is_vector: Tensor | None = None         # [batch, pos] bool
    roles: dict[str, Tensor] = field(default_factory=dict)   # name -> [batch, pos] bool
    induction_keys: Tensor | None = None    # [batch, query, key] bool
    induction_others: Tensor | None = None  # [batch, query, key] bool
    classes: Tensor | None = None           # [batch, pos] long, class of each vector (-1 else)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor on `device` (itself when it is there already)."""
        if self.tokens.device == torch.device(device):
            return self

        def m(t):
            return None if t is None else t.to(device)
        return Batch(m(self.tokens), m(self.targets), m(self.vectors), m(self.is_vector),
                     {k: v.to(device) for k, v in self.roles.items()}, m(self.induction_keys),
                     m(self.induction_others), m(self.classes))

    def select(self, idx: Tensor | slice) -> Batch:
        """The sub-batch of rows `idx` (every tensor field indexed along the batch axis)."""
        def s(t):
            return None if t is None else t[idx]
        return Batch(self.tokens[idx], self.targets[idx], s(self.vectors), s(self.is_vector),
                     {k: v[idx] for k, v in self.roles.items()}, s(self.induction_keys),
                     s(self.induction_others), s(self.classes))


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits [batch, pos, n_out] over targets [batch, pos] that are not -100."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def loss_and_accuracy(logits: Tensor, targets: Tensor) -> tuple[float, float]:
    """(cross-entropy, argmax accuracy) over positions whose target is not -100."""
    keep = targets != -100
    lg, tg = logits[keep], targets[keep]                  # [n, n_out], [n]
    return F.cross_entropy(lg, tg).item(), (lg.argmax(-1) == tg).float().mean().item()


def rng_for(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of ints (seed, stream, step...), well mixed."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Task:
    """Base class. Subclasses set `name`, `Options` (a frozen dataclass) and implement the rest."""

    name: ClassVar[str]
    Options: ClassVar[type]
    evaluator_names: ClassVar[tuple[str, ...]] = ("train",)
    # What the task's batches carry, declared so a recipe can be checked before it runs
    # (None: not declared; recipes using it are then checked when they run):
    roles: ClassVar[tuple[str, ...] | None] = None      # position roles (value sources' `rows:`)
    induction_keys: ClassVar[bool | None] = None        # batches mark where an induction head looks
    has_repeated_segments: ClassVar[bool | None] = None  # `repeated_segments()` gives sequences
    default_model: ClassVar[dict] = {}                  # model keys whose default differs for this task
    default_train: ClassVar[dict] = {}                  # train keys whose default differs for this task
    default_measures: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "prev_token_score", "induction_strength")
    accuracy: ClassVar[bool] = True     # False: targets are not classes (no accuracy column)
    dense_targets: ClassVar[bool] = False   # a target at every position (language modelling): per-position losses

    def __init__(self, options, seed: int):
        self.options = options
        self.seed = seed

    @classmethod
    def io(cls, options) -> TaskIO:
        raise NotImplementedError

    @classmethod
    def evaluators_of(cls, options) -> tuple[str, ...]:
        """The evaluators this task has with these options (a subset of `evaluator_names`)."""
        return cls.evaluator_names

    @classmethod
    def default_phases(cls, options) -> dict:
        """Phase rules used when a recipe names none: {measure column: {below|above|relative: x}}."""
        return {}

    @classmethod
    def data_bytes(cls, options, batch: int, eval_size: int) -> int:
        """An upper estimate of the memory this task's data takes: the fixed evaluation sets and one
        training batch (tokens, targets, vectors, roles, induction masks), plus whatever the task
        keeps besides (override to add it). Used to refuse a recipe before anything is allocated."""
        io = cls.io(options)
        T = io.n_ctx
        per_seq = T * (8 + 8 + 4 * io.vector_dim + 4 + 2 * T)              # tokens, targets, vectors, roles, masks
        return per_seq * (len(cls.evaluator_names) * eval_size + batch)

    def train_batch(self, step: int, size: int) -> Batch:
        raise NotImplementedError

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """The training loss (a scalar with gradient) of logits [batch, pos, n_out]: by default the mean
        next-token cross-entropy over positions whose target is not -100. A task whose targets are not
        classes (a regression, say) overrides this and `score` (its runs then train alone, not as
        ensembles, whose stacked loss is the cross-entropy)."""
        return next_token_loss(logits, batch.targets)

    def score(self, logits: Tensor, batch: Batch) -> tuple[float, float | None]:
        """(loss, accuracy) of an evaluation batch; accuracy None when the task has none (`accuracy`
        False). By default cross-entropy and argmax accuracy over positions with a target."""
        return loss_and_accuracy(logits, batch.targets)

    @classmethod
    def own_loss(cls) -> bool:
        """Whether the task defines its own loss (not the default cross-entropy)."""
        return cls.loss is not Task.loss

    def train_batches(self, start: int, count: int, size: int) -> list[Batch]:
        """The training batches of steps start .. start+count-1, each equal to `train_batch(step, size)`
        (the training loop takes them in chunks; a task may build a chunk at once, as the built-in
        tasks do: each step's random numbers from its own generator, the arithmetic for all together)."""
        return [self.train_batch(s, size) for s in range(start, start + count)]

    def evaluators(self, size: int) -> dict[str, Batch]:
        """Fixed evaluation sets, one per name in `evaluator_names`, the same on every call."""
        raise NotImplementedError

    def repeated_segments(self, size: int) -> Batch | None:
        """Sequences for token-level induction scores (repeated segments), if the task has them."""
        return None


TASKS: dict[str, type[Task]] = {}


register_task = decorator(TASKS, "task")
"""`@register_task` (or `@register_task(replace=True)`): a taken name is refused unless replaced on purpose."""


def get_task(name: str) -> type[Task]:
    if isinstance(name, str) and name in TASKS:
        return TASKS[name]
    raise InputError("", "", show(name), "a task: one of " + ", ".join(sorted(TASKS)),
                     did_you_mean(str(name), TASKS) or "or a plug-in's task (README, Extending clamp)")

