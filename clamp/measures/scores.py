"""Loss, accuracy and per-position accuracy: what the task's targets say about the logits.

Model layer (measures/): built-in measures, registered on import (definitions: docs/science.md §4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..names import columns as C
from .base import REPEATS, Measure, register_measure


def _scores(m: Measure, outputs, batches) -> dict[str, tuple[float, float | None]]:
    """(loss, accuracy) of each evaluator, by the task's own score (cross-entropy and argmax by default)."""
    return {k: m.task.score(outputs[k][0], b) for k, b in batches.items() if k != REPEATS}


@register_measure
class Loss(Measure):
    name = "loss"
    doc = "the task's loss on each evaluator (`loss`, `loss/<evaluator>`)"

    @classmethod
    def columns(cls, shape, evaluators):
        return [C.evaluator_column("loss", e) for e in evaluators]

    def compute(self, outputs, batches, seam):
        return {C.evaluator_column("loss", k): v[0] for k, v in _scores(self, outputs, batches).items()}


@register_measure
class Accuracy(Measure):
    name = "accuracy"
    doc = "argmax = target where there is a target, on each evaluator (`accuracy`, `accuracy/<evaluator>`)"

    @classmethod
    def unavailable(cls, task, options, shape):
        return "" if task.accuracy else f"{task.name}'s targets are not classes (it has no accuracy)"

    @classmethod
    def columns(cls, shape, evaluators):
        return [C.evaluator_column("accuracy", e) for e in evaluators]

    def compute(self, outputs, batches, seam):
        return {C.evaluator_column("accuracy", k): v[1] for k, v in _scores(self, outputs, batches).items()
                if v[1] is not None}


def position_accuracies(logits: Tensor, tokens: Tensor) -> Tensor:
    """logits [batch, pos, n_out], tokens [batch, pos] → [pos-1]: accuracy of the prediction at each
    position t of token t+1."""
    return (logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean(0)


@register_measure
class PositionAccuracy(Measure):
    name = "position_accuracy"
    doc = ("`position_accuracy/pos<t>`: on the train evaluator, argmax at position t = token t+1 over every "
           "sequence (loss mask or not): how much context each position needs")

    @classmethod
    def columns(cls, shape, evaluators):
        return [C.position_column(cls.name, t) for t in range(shape.n_ctx - 1)] if "train" in evaluators else []

    @torch.no_grad()
    def compute(self, outputs, batches, seam):
        if "train" not in outputs:
            return {}
        accs = position_accuracies(outputs["train"][0], batches["train"].tokens)
        return {C.position_column(self.name, t): v for t, v in enumerate(accs.tolist())}


def position_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """logits [batch, pos, n_out], targets [batch, pos] → [pos]: the mean cross-entropy at each position
    over the sequences with a target there."""
    keep = targets != -100                                                    # [batch, pos]
    ce = F.cross_entropy(logits.transpose(1, 2).float(), targets.clamp_min(0), reduction="none")   # [batch, pos]
    return (ce * keep).sum(0) / keep.sum(0).clamp_min(1)


def _dense(task) -> str:
    return "" if task.dense_targets else f"{task.name} has no target at every position (per-position losses)"


def _lm_evaluator(evaluators) -> str | None:
    """The evaluator per-position losses are read on: held-out text where the task has it."""
    return "heldout" if "heldout" in evaluators else "train" if "train" in evaluators else None


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """(early, late) positions of the in-context learning score: about a tenth into the context and
    the last (Olsson et al. 2022: the 50th and the 500th token of 512)."""
    return min(max(1, round(n_ctx / 10)), n_ctx - 1), n_ctx - 1


@register_measure
class ICLScore(Measure):
    name = "icl_score"
    doc = ("in-context learning score (Olsson et al. 2022): the loss at the last position minus the loss at "
           "position round(context/10), on held-out text (else the train evaluator); below 0 when later tokens "
           "are predicted better than early ones")

    @classmethod
    def unavailable(cls, task, options, shape):
        return _dense(task)

    @classmethod
    def columns(cls, shape, evaluators):
        return [cls.name] if _lm_evaluator(evaluators) else []

    @torch.no_grad()
    def compute(self, outputs, batches, seam):
        ev = _lm_evaluator([k for k in outputs if k != REPEATS])
        if ev is None:
            return {}
        pl = position_losses(outputs[ev][0], batches[ev].targets)
        early, late = icl_positions(pl.shape[0])
        return {self.name: float(pl[late] - pl[early])}


def loss_positions(n_ctx: int) -> list[int]:
    """The positions `position_loss` reports: 0, 1, 2, 4, 8, ... and the last."""
    out, t = [0], 1
    while t < n_ctx - 1:
        out.append(t)
        t *= 2
    return out + [n_ctx - 1] if n_ctx > 1 else out


@register_measure
class PositionLoss(Measure):
    name = "position_loss"
    doc = ("`position_loss/pos<t>`: the loss of the prediction at position t (t = 0, 1, 2, 4, 8, ... and the "
           "last), on held-out text (else the train evaluator): how much the context helps")

    @classmethod
    def unavailable(cls, task, options, shape):
        return _dense(task)

    @classmethod
    def columns(cls, shape, evaluators):
        if _lm_evaluator(evaluators) is None:
            return []
        return [C.position_column(cls.name, t) for t in loss_positions(shape.n_ctx)]

    @torch.no_grad()
    def compute(self, outputs, batches, seam):
        ev = _lm_evaluator([k for k in outputs if k != REPEATS])
        if ev is None:
            return {}
        pl = position_losses(outputs[ev][0], batches[ev].targets)
        return {C.position_column(self.name, t): float(pl[t]) for t in loss_positions(pl.shape[0])}
