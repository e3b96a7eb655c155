"""What heads attend to: previous-token scores, induction strength and score, attention to the first
position, uniformity and duplicate tokens.

Model layer (measures/): built-in per-head measures, registered on import (definitions:
docs/science.md §4). A = the head's attention pattern after any clamp, [batch, head, query, key].
"""
from __future__ import annotations

from torch import Tensor

from ..names.sites import ModelShape
from .base import REPEATS, Measure, head_column, register_measure

PATTERN = "blocks.{L}.attn.hook_pattern"


def prev_token_scores(A: Tensor, rows: Tensor | None = None) -> Tensor:
    """A [batch, head, query, key] → [head]: mean over rows i>=1 (or the rows marked in
    `rows` [batch, query]) of A[i, i-1]."""
    import torch
    T = A.shape[-1]
    i = torch.arange(1, T, device=A.device)
    prev = A[:, :, i, i - 1]                                   # [batch, head, T-1]
    if rows is None:
        return prev.mean(dim=(0, 2))
    w = rows[:, None, 1:].float()
    return (prev * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)


def induction_strengths(A: Tensor, keys: Tensor, others: Tensor | None) -> Tensor:
    """A [batch, head, query, key]; keys/others [batch, query, key] bool → [head]."""
    rows = keys.any(-1)                                    # [batch, query]
    good = (A * keys[:, None]).sum(-1)                     # [batch, head, query]
    if others is not None:
        good = good - (A * others[:, None]).sum(-1)
    w = rows[:, None].float()
    return (good * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)


class _PatternMeasure(Measure):
    """A per-head measure of the train evaluator's attention patterns."""

    record = (PATTERN,)
    head_site = PATTERN

    def per_layer(self, A: Tensor, batch) -> Tensor | None:
        raise NotImplementedError

    def compute(self, outputs, batches, seam):
        if "train" not in outputs:
            return {}
        rec, batch = outputs["train"][1], batches["train"]
        row = {}
        shape: ModelShape = self.shape                              # type: ignore[assignment]
        for L in range(shape.layers):
            site = PATTERN.format(L=L)
            if site not in rec:
                continue
            got = self.per_layer(rec[site], batch)
            if got is None:
                return {}
            row.update({head_column(self.name, L, h): v for h, v in enumerate(got.tolist())})
        return row


@register_measure
class PrevTokenScore(_PatternMeasure):
    name = "prev_token_score"
    doc = "per head: mean over rows i >= 1 of A[i, i-1] (attention to the previous position)"

    def per_layer(self, A, batch):
        return prev_token_scores(A)


@register_measure
class LabelPrevTokenScore(_PatternMeasure):
    name = "label_prev_token_score"
    doc = ("per head: the previous-token score over label rows only (few-shot), where the paper's previous-token "
           "heads act")

    @classmethod
    def unavailable(cls, task, options, shape):
        return f"{task.name} has no label positions" if task.roles is not None and "label" not in task.roles else ""

    def per_layer(self, A, batch):
        return prev_token_scores(A, batch.roles["label"]) if "label" in batch.roles else None


@register_measure
class InductionStrength(_PatternMeasure):
    name = "induction_strength"
    doc = ("per head: at rows with induction keys, attention to the correct keys minus attention to the other "
           "keys of the same kind (the other labels); in [-1, 1] (the paper's measure)")

    @classmethod
    def unavailable(cls, task, options, shape):
        return f"{task.name} marks no induction keys" if task.induction_keys is False else ""

    def per_layer(self, A, batch):
        if batch.induction_keys is None:
            return None
        return induction_strengths(A, batch.induction_keys, batch.induction_others)


@register_measure
class InductionScore(Measure):
    name = "induction_score"
    doc = ("per head: on the task's repeated random segments, mean attention from rows in the repeats to the key "
           "after the row token's previous occurrence (Olsson et al.'s prefix matching)")
    repeats = (PATTERN,)
    head_site = PATTERN

    @classmethod
    def unavailable(cls, task, options, shape):
        if task.has_repeated_segments is False:
            return f"{task.name} has no repeated-segment probe (a token task such as repeat_tokens has)"
        return ""

    @classmethod
    def columns(cls, shape, evaluators):
        return [head_column(cls.name, L, h) for L in range(shape.layers) for h in range(shape.heads)]

    def compute(self, outputs, batches, seam):
        if REPEATS not in outputs:
            return {}
        rec, batch = outputs[REPEATS][1], batches[REPEATS]
        keys = batch.induction_keys
        assert keys is not None, "a task's repeated segments mark their induction keys"
        row = {}
        for L in range(self.shape.layers):                           # type: ignore[union-attr]
            for h, v in enumerate(induction_strengths(rec[PATTERN.format(L=L)], keys, None).tolist()):
                row[head_column(self.name, L, h)] = v
        return row


def _rows_after_first(A: Tensor) -> Tensor:
    """A [batch, head, query, key] → the rows i ≥ 1, [batch, head, query-1, key]."""
    return A[:, :, 1:]


def first_position_scores(A: Tensor) -> Tensor:
    """A [batch, head, query, key] → [head]: mean over rows i ≥ 1 of A[i, 0] (an attention sink)."""
    return _rows_after_first(A)[..., 0].mean(dim=(0, 2))


def uniformities(A: Tensor) -> Tensor:
    """A [batch, head, query, key] → [head]: mean over rows i ≥ 1 of the row's entropy over the i+1 keys
    it may see, divided by log(i+1): 1 for a head that averages evenly over its past, 0 for one that
    looks at a single key."""
    import torch
    T = A.shape[-1]
    p = _rows_after_first(A).clamp_min(0)                                  # [batch, head, T-1, key]
    H = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)                       # [batch, head, T-1]
    seen = torch.arange(2, T + 1, device=A.device, dtype=A.dtype)          # keys row i may see: i+1
    return (H / torch.log(seen)).mean(dim=(0, 2))


def item_ids(batch) -> Tensor:
    """[batch, pos] long: what sits at each position, for 'the same item seen before': the token, or for
    a vector position its class (offset past every token id, so the two never collide)."""
    ids = batch.tokens
    if batch.is_vector is not None and batch.classes is not None:
        import torch
        ids = torch.where(batch.is_vector, batch.classes + int(batch.tokens.max()) + 1, ids)
    return ids


def duplicate_token_scores(A: Tensor, ids: Tensor) -> Tensor:
    """A [batch, head, query, key]; ids [batch, pos] → [head]: over rows whose item occurred earlier,
    the attention on those earlier occurrences (mean over such rows; 0 where no row has one)."""
    import torch
    T = A.shape[-1]
    earlier = torch.ones(T, T, dtype=torch.bool, device=A.device).tril(-1)  # [query, key]: key < query
    same = (ids[:, :, None] == ids[:, None, :]) & earlier                   # [batch, query, key]
    rows = same.any(-1)                                                     # [batch, query]
    on = (A * same[:, None]).sum(-1)                                        # [batch, head, query]
    w = rows[:, None].float()
    return (on * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)


@register_measure
class FirstPositionScore(_PatternMeasure):
    name = "first_position_score"
    doc = "per head: mean over rows i >= 1 of A[i, 0] (attention parked on the first position: a sink)"

    def per_layer(self, A, batch):
        return first_position_scores(A)


@register_measure
class Uniformity(_PatternMeasure):
    name = "uniformity"
    doc = ("per head: mean over rows i >= 1 of the row's entropy divided by log(i+1), the entropy of even "
           "attention over the keys it may see (1: averaging, 0: one key)")

    def per_layer(self, A, batch):
        return uniformities(A)


@register_measure
class DuplicateTokenScore(_PatternMeasure):
    name = "duplicate_token_score"
    doc = ("per head: at rows whose item (token, or a vector's class) occurred before, the attention on its "
           "earlier occurrences")

    def per_layer(self, A, batch):
        return duplicate_token_scores(A, item_ids(batch))
