"""Repeated random tokens (Olsson et al. 2022; Elhage et al. 2021; docs/science.md §2).

Uniform random tokens of length `length`; a `segment`-token span starting at a random place a
is copied to start a random gap g >= `min_gap` later (b = a + g), so position alone cannot solve
the task. Where g < segment the copy overlaps the original and the span a .. b+segment-1 is
periodic with period g (the copy is written token by token, as a loop would). Next-token loss is
counted only inside the copy, where an induction head can predict: rows b .. b+segment-2.

Why the gap may be short: when every gap is at least L, a layer-0 head attending a fixed lag L
(instead of the previous token) composes with layer 1 into an "induction head at lag L", which
solves the task without the previous-token mechanism and is invisible to the induction score
(measured: with min_gap = segment = 20, layer-0 heads attended lag 19-20 and ablating their
previous-token attention changed nothing). Gaps down to 1 leave lag 1 as the only one that
always works.

`induction_keys`: from each copied row i, the keys just after every earlier occurrence of
token i inside the span (i-g+1, i-2g+1, ...). The repeated-segment set (for the prefix-matching induction
score) is a random segment repeated `segment_repeats` times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..names.schema import opt, positive
from .base import Batch, Task, TaskIO, register_task, rng_for


@dataclass(frozen=True)
class RepeatTokensOptions:
    vocab: int = opt(64, check=positive, doc="vocabulary size V")
    length: int = opt(64, check=positive, doc="sequence length")
    segment: int = opt(20, check=positive, doc="length of the repeated segment")
    min_gap: int = opt(1, check=positive, doc="least distance from the original's start to the copy's "
                       "(below `segment` they overlap; equal to it, they never do)")
    segment_repeats: int = opt(2, check=positive,
                               doc="repeats of a segment in the sequences the induction score is measured on")

    def validate(self):
        if self.segment < 2:
            return ("segment", "at least 2 tokens (the first token of a copy is unpredictable)")
        if self.segment + self.min_gap > self.length:
            return ("min_gap", f"at most length - segment ({self.length - self.segment}) so the copy fits")
        return None


@register_task
class RepeatTokens(Task):
    name = "repeat_tokens"
    Options = RepeatTokensOptions
    evaluator_names = ("train",)
    roles = ("copy",)
    induction_keys = True
    has_repeated_segments = True
    # token embeddings N(0, 1) (nn.Embedding's init): at 0.02 the model found a shifted-key circuit
    # without an induction head, and frozen embeddings never learnt (benchmarks/RESULTS.md)
    default_model = {"embed_std": 1.0}
    default_measures = ("loss", "accuracy", "prev_token_score", "induction_score")
    # induction forms at ~1500-1800 steps with the defaults (3 seeds): 3000 leave room; 256 sequences
    # of 64 tokens per evaluation keep evaluation cheap
    default_train = {"steps": 3000, "eval_every": 50, "eval_size": 256}

    @classmethod
    def io(cls, o: RepeatTokensOptions) -> TaskIO:
        return TaskIO(vocab=o.vocab, n_out=o.vocab, n_ctx=o.length)

    @classmethod
    def default_phases(cls, options: RepeatTokensOptions) -> dict:
        # half of chance-level loss on the copy; an induction head in any layer
        return {"loss": {"below": 0.5 * math.log(options.vocab), "relative": 0.5},
                "max(induction_score/blocks.*.attn.hook_pattern[*])": {"above": 0.5}}

    def _sequences(self, g: torch.Generator, B: int) -> Batch:
        return self._assemble(self._draw(g, B))

    def _draw(self, g: torch.Generator, B: int) -> dict[str, Tensor]:
        """The random numbers of B sequences, drawn from `g` in a fixed order (the rest is arithmetic)."""
        o = self.options
        return {"tokens": torch.randint(o.vocab, (B, o.length), generator=g),
                "a": torch.rand(B, generator=g), "gap": torch.rand(B, generator=g)}

    def _assemble(self, d: dict[str, Tensor]) -> Batch:
        """Sequences from their random numbers, row by row (rows of several draws concatenated give
        the sequences each gives alone)."""
        o = self.options
        T, S = o.length, o.segment
        tokens = d["tokens"].clone()
        B = tokens.shape[0]
        a = (d["a"] * (T - S - o.min_gap + 1)).long()                             # original's start
        gap = o.min_gap + (d["gap"] * (T - S - a - o.min_gap + 1)).long()
        b = a + gap                                                               # copy's start
        rows = torch.arange(B)
        for r in range(S):                       # token by token: an overlapping copy is periodic
            tokens[rows, b + r] = tokens[rows, b + r - gap]
        pos = torch.arange(T)
        rel = pos[None, :] - b[:, None]                                           # [B, T] offset in copy
        in_copy = (rel >= 0) & (rel < S)
        nxt = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)
        predictable = (rel >= 0) & (rel < S - 1)
        targets = torch.where(predictable, nxt, torch.full_like(tokens, -100))
        # earlier occurrences of row i's token inside the span: i - m*gap >= a, m >= 1
        back = pos[None, :, None] - pos[None, None, :] + 1                         # [1, T(query), T(key)] = i-k+1
        m_ok = (back > 0) & (back % gap[:, None, None] == 0)                       # k = i - m*gap + 1
        keys = in_copy[:, :, None] & m_ok & (pos[None, None, :] - 1 >= a[:, None, None])
        return Batch(tokens, targets, roles={"copy": in_copy}, induction_keys=keys,
                     induction_others=torch.zeros_like(keys))

    def train_batch(self, step: int, size: int) -> Batch:
        return self._sequences(rng_for(self.seed, 7, step), size)

    def train_batches(self, start: int, count: int, size: int) -> list[Batch]:
        draws = [self._draw(rng_for(self.seed, 7, s), size) for s in range(start, start + count)]
        big = self._assemble({k: torch.cat([d[k] for d in draws]) for k in draws[0]})
        return [big.select(slice(i * size, (i + 1) * size)) for i in range(count)]

    def evaluators(self, size: int) -> dict[str, Batch]:
        return {"train": self._sequences(rng_for(self.seed, 11), size)}

    def repeated_segments(self, size: int) -> Batch:
        o = self.options
        S = o.length // o.segment_repeats
        g = rng_for(self.seed, 17)
        seg = torch.randint(o.vocab, (size, S), generator=g)
        tokens = seg.repeat(1, o.segment_repeats)                                    # [size, S*repeats]
        T = tokens.shape[1]
        keys = torch.zeros(size, T, T, dtype=torch.bool)
        i = torch.arange(S, T)
        keys[:, i, i - S + 1] = True
        targets = torch.full_like(tokens, -100)
        targets[:, S - 1:T - 1] = tokens[:, S:T]
        return Batch(tokens, targets, roles={"copy": keys.any(-1)}, induction_keys=keys,
                     induction_others=torch.zeros_like(keys))
