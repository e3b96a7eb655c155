"""Repeated random tokens (Olsson et al. 2022; Elhage et al. 2021; REFERENCE.md §2).

Uniform random tokens of length `length`; a `segment`-token span starting at a random
place is copied to a random later place (never overlapping it), so position alone cannot
solve the task. Next-token loss is counted only inside the copy, where an induction head
can predict: rows b .. b+segment-2 of a copy starting at b.

`induction_keys`: from each copied row i, the key just after the earlier occurrence of
token i. The probe set (for the prefix-matching induction score) is a random segment
repeated `probe_repeats` times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schema import opt, positive
from . import Batch, Task, TaskIO, register_task, rng_for


@dataclass(frozen=True)
class RepeatTokensOptions:
    vocab: int = opt(64, check=positive, doc="vocabulary size V")
    length: int = opt(64, check=positive, doc="sequence length")
    segment: int = opt(20, check=positive, doc="length of the repeated segment")
    probe_repeats: int = opt(2, check=positive, doc="repeats of a segment in the induction-score probe")

    def validate(self):
        if 2 * self.segment > self.length:
            return ("segment", f"at most length/2 ({self.length // 2}) so the copy fits after the original")
        if self.segment < 2:
            return ("segment", "at least 2 tokens (the first token of a copy is unpredictable)")
        return None


@register_task
class RepeatTokens(Task):
    name = "repeat_tokens"
    Options = RepeatTokensOptions
    evaluator_names = ("train",)

    @classmethod
    def io(cls, o: RepeatTokensOptions) -> TaskIO:
        return TaskIO(vocab=o.vocab, n_out=o.vocab, n_ctx=o.length)

    @classmethod
    def default_phases(cls, options: RepeatTokensOptions) -> dict:
        # half of chance-level loss on the copy
        return {"loss": {"below": 0.5 * math.log(options.vocab), "relative": 0.5}}

    def _sequences(self, g: torch.Generator, B: int) -> Batch:
        o = self.options
        T, S = o.length, o.segment
        tokens = torch.randint(o.vocab, (B, T), generator=g)
        a = (torch.rand(B, generator=g) * (T - 2 * S + 1)).long()                 # source start
        b = a + S + (torch.rand(B, generator=g) * (T - S - (a + S) + 1)).long()  # copy start
        pos = torch.arange(T)
        rel = pos[None, :] - b[:, None]                                           # [B, T] offset in copy
        in_copy = (rel >= 0) & (rel < S)
        src = (a[:, None] + rel).clamp(0, T - 1)
        tokens = torch.where(in_copy, tokens.gather(1, src), tokens)
        nxt = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)
        predictable = (rel >= 0) & (rel < S - 1)
        targets = torch.where(predictable, nxt, torch.full_like(tokens, -100))
        keys = torch.zeros(B, T, T, dtype=torch.bool)
        rows = in_copy.nonzero()                                                  # [n, 2] (batch, row)
        keys[rows[:, 0], rows[:, 1], src[rows[:, 0], rows[:, 1]] + 1] = True
        return Batch(tokens, targets, roles={"copy": in_copy}, induction_keys=keys,
                     induction_others=torch.zeros_like(keys))

    def train_batch(self, step: int, size: int) -> Batch:
        return self._sequences(rng_for(self.seed, 7, step), size)

    def evaluators(self, size: int) -> dict[str, Batch]:
        return {"train": self._sequences(rng_for(self.seed, 11), size)}

    def probe(self, size: int) -> Batch:
        o = self.options
        S = o.length // o.probe_repeats
        g = rng_for(self.seed, 17)
        seg = torch.randint(o.vocab, (size, S), generator=g)
        tokens = seg.repeat(1, o.probe_repeats)                                    # [size, S*repeats]
        T = tokens.shape[1]
        keys = torch.zeros(size, T, T, dtype=torch.bool)
        i = torch.arange(S, T)
        keys[:, i, i - S + 1] = True
        targets = torch.full_like(tokens, -100)
        targets[:, S - 1:T - 1] = tokens[:, S:T]
        return Batch(tokens, targets, roles={"copy": keys.any(-1)}, induction_keys=keys,
                     induction_others=torch.zeros_like(keys))
