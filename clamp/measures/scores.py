"""Loss, accuracy and per-position accuracy: what the task's targets say about the logits.

Model layer (measures/): built-in measures, registered on import (definitions: docs/science.md §4).
"""
from __future__ import annotations

import torch
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
