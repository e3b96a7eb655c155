"""Affine recurrences mod p (Bhargav & Gu 2024; docs/science.md §3).

A sequence is x_0, x_1, ..., x_{length-1} with x_{n+1} = a·x_n + b (mod p), p = `modulus` (a prime),
one (a, b) drawn per sequence with a in 1..p-1 and b in 0..p-1, and x_0 uniform. The tokens are the
residues themselves (vocabulary p).

What is predictable: x_0, x_1 and x_2 fix the recurrence. If x_1 != x_0, a = (x_2 - x_1)/(x_1 - x_0)
and b = x_1 - a·x_0 (p prime, so the division exists); if x_1 = x_0, x_0 is a fixed point and the
sequence is constant. So every term from x_3 on is a function of the context, and x_1, x_2 are not.
The loss is counted on the predictable terms only: the predictions at positions 2 .. length-2.

Held-out pairs: `heldout_pairs` of the p·(p-1) pairs (a, b) never appear in training; the `heldout`
evaluator draws only from them (the split is a fixed function of p and the count, the same for every
seed, so seeds differ only in init and data order). Evaluators: train (training pairs), heldout.

Per-position accuracy (`position_accuracy` measure) reads the next token at every position, loss mask
or not, so the first two predictions (chance: 1/p) show how much context each position needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..names.columns import position_column
from ..names.schema import non_negative, opt, positive
from .base import Batch, Task, TaskIO, register_task, rng_for

MAX_MODULUS = 1021      # the pairs (a, b) are listed: p·(p-1) of them, ~1M at most


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(math.isqrt(n)) + 1))


@dataclass(frozen=True)
class AffineOptions:
    modulus: int = opt(11, check=lambda v: None if 2 <= v <= MAX_MODULUS else f"a prime in 2..{MAX_MODULUS}",
                       doc="the prime p: tokens are the residues 0..p-1")
    length: int = opt(16, check=positive, doc="terms per sequence")
    heldout_pairs: int = opt(10, check=non_negative,
                             doc="pairs (a, b) kept out of training, for the heldout evaluator")
    first_loss: int = opt(3, check=non_negative, doc="the first term counted in the loss (3: the first one "
                          "the context determines)")

    def validate(self):
        if not _is_prime(self.modulus):
            near = [q for q in range(self.modulus - 1, 1, -1) if _is_prime(q)][:1] + \
                [q for q in range(self.modulus + 1, MAX_MODULUS + 1) if _is_prime(q)][:1]
            return ("modulus", "a prime (so every a has an inverse), e.g. " + " or ".join(map(str, sorted(near))))
        if self.length < 4:
            return ("length", "at least 4 terms (x_3 is the first the context determines)")
        pairs = self.modulus * (self.modulus - 1)
        if self.heldout_pairs >= pairs:
            return ("heldout_pairs", f"fewer than the {pairs} pairs (a, b) there are")
        if not 1 <= self.first_loss < self.length:
            return ("first_loss", f"a term in 1..{self.length - 1}")
        return None


def pair_split(o: AffineOptions) -> tuple[Tensor, Tensor]:
    """(training pairs, held-out pairs), each [n, 2] long of (a, b); fixed for given options."""
    p = o.modulus
    a, b = torch.meshgrid(torch.arange(1, p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], 1)                        # [p(p-1), 2]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(p * 7919 + o.heldout_pairs))
    held = order[:o.heldout_pairs]
    keep = torch.ones(len(pairs), dtype=torch.bool)
    keep[held] = False
    return pairs[keep], pairs[held.sort().values]


def recurrence(x0: Tensor, a: Tensor, b: Tensor, p: int, length: int) -> Tensor:
    """[B] each → [B, length]: x_{n+1} = a·x_n + b mod p."""
    xs = [x0]
    for _ in range(length - 1):
        xs.append((a * xs[-1] + b) % p)
    return torch.stack(xs, 1)


@register_task
class Affine(Task):
    name = "affine"
    Options = AffineOptions
    evaluator_names = ("train", "heldout")
    roles = ("predictable",)
    induction_keys = False
    has_repeated_segments = False
    # GPT-style: MLPs, learned positions, token embeddings N(0, 1) (the token is the only signal)
    default_model = {"layers": 3, "heads": 4, "d_model": 64, "attn_only": False, "pos": "learned",
                     "embed_std": 1.0}
    default_train = {"steps": 3000, "lr": 1e-3, "batch": 64, "eval_every": [[0, 25], [1000, 50]],
                     "eval_size": 512}
    default_measures = ("loss", "accuracy", "position_accuracy", "copying_score", "negative_similarity")

    def __init__(self, options: AffineOptions, seed: int):
        super().__init__(options, seed)
        self.train_pairs, self.heldout_pairs = pair_split(options)

    @classmethod
    def evaluators_of(cls, o: AffineOptions) -> tuple[str, ...]:
        return cls.evaluator_names if o.heldout_pairs else ("train",)

    @classmethod
    def io(cls, o: AffineOptions) -> TaskIO:
        return TaskIO(vocab=o.modulus, n_out=o.modulus, n_ctx=o.length)

    @classmethod
    def default_phases(cls, o: AffineOptions) -> dict:
        # half of chance-level loss on the predictable terms; the first determined term predicted (it
        # needs the recurrence itself: no repeat can be copied that early in most sequences)
        return {"loss": {"below": 0.5 * math.log(o.modulus), "relative": 0.5},
                position_column("position_accuracy", o.first_loss - 1): {"above": 0.9}}

    def _draw(self, g: torch.Generator, B: int, pairs: Tensor) -> dict[str, Tensor]:
        return {"pair": torch.randint(len(pairs), (B,), generator=g),
                "x0": torch.randint(self.options.modulus, (B,), generator=g)}

    def _assemble(self, d: dict[str, Tensor], pairs: Tensor) -> Batch:
        o = self.options
        ab = pairs[d["pair"]]                                                    # [B, 2]
        tokens = recurrence(d["x0"], ab[:, 0], ab[:, 1], o.modulus, o.length)   # [B, T]
        pos = torch.arange(o.length)
        predictable = ((pos >= o.first_loss - 1) & (pos < o.length - 1)).expand_as(tokens)   # row n predicts x_{n+1}
        nxt = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)
        targets = torch.where(predictable, nxt, torch.full_like(tokens, -100))
        return Batch(tokens, targets, roles={"predictable": predictable.clone()})

    def train_batch(self, step: int, size: int) -> Batch:
        return self._assemble(self._draw(rng_for(self.seed, 7, step), size, self.train_pairs), self.train_pairs)

    def train_batches(self, start: int, count: int, size: int) -> list[Batch]:
        draws = [self._draw(rng_for(self.seed, 7, s), size, self.train_pairs) for s in range(start, start + count)]
        big = self._assemble({k: torch.cat([d[k] for d in draws]) for k in draws[0]}, self.train_pairs)
        return [big.select(slice(i * size, (i + 1) * size)) for i in range(count)]

    def evaluators(self, size: int) -> dict[str, Batch]:
        out = {"train": self._assemble(self._draw(rng_for(self.seed, 11), size, self.train_pairs), self.train_pairs)}
        if self.options.heldout_pairs:
            out["heldout"] = self._assemble(self._draw(rng_for(self.seed, 13), size, self.heldout_pairs),
                                            self.heldout_pairs)
        return out
