"""An extension of clamp: a regression task, a value source and a progress measure."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clamp.measures import Measure, register_measure
from clamp.schema import opt, positive
from clamp.tasks import Batch, Task, TaskIO, register_task, rng_for
from clamp.values import NoOptions, ValueSource, register_value


@dataclass(frozen=True)
class MeanOptions:
    vocab: int = opt(10, check=positive, doc="token values are 0 .. vocab-1")
    length: int = opt(8, check=positive, doc="sequence length")


@register_task
class RunningMean(Task):
    """At each position, predict the mean of the token values so far: a number, not a class."""
    name = "running_mean"
    Options = MeanOptions
    accuracy = False                      # no classes, so no accuracy column
    default_measures = ("loss",)

    @classmethod
    def io(cls, o):
        return TaskIO(vocab=o.vocab, n_out=1, n_ctx=o.length)    # one output: the prediction

    def _sequences(self, g, B):
        o = self.options
        tokens = torch.randint(o.vocab, (B, o.length), generator=g)
        means = tokens.float().cumsum(1) / torch.arange(1, o.length + 1)
        return Batch(tokens, means)

    def loss(self, logits, batch):         # mean squared error instead of cross-entropy
        return F.mse_loss(logits[..., 0], batch.targets)

    def score(self, logits, batch):        # (loss, accuracy) of an evaluation
        return self.loss(logits, batch).item(), None

    def train_batch(self, step, size):
        return self._sequences(rng_for(self.seed, 7, step), size)

    def evaluators(self, size):
        return {"train": self._sequences(rng_for(self.seed, 11), size)}


@register_value
class UniformAttention(ValueSource):
    name, Options, sites = "uniform_attention", NoOptions, ("hook_pattern",)
    doc = "each row attends equally to every key it may see (what a running mean needs)"

    def value(self, x, site, ctx):         # x [batch, head, query, key]
        T = x.shape[-1]
        pattern = torch.ones(T, T, dtype=x.dtype, device=x.device).tril()
        return (pattern / pattern.sum(-1, keepdim=True)).expand_as(x), None


@register_measure
class Explained(Measure):
    name = "explained"
    doc = "1 - MSE / variance of the targets on the train evaluator (R²)"

    def compute(self, outputs, batches, seam):
        logits, _ = outputs["train"]
        y = batches["train"].targets
        return {"explained": 1 - F.mse_loss(logits[..., 0], y).item() / y.var().item()}
