"""Negative similarity: heads whose scores favour tokens unlike the query's (Bhargav & Gu).

Model layer (measures/): a built-in per-head measure, registered on import (docs/science.md §4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Measure, head_column, register_measure

SCORES = "blocks.{L}.attn.hook_attn_scores"


def negative_similarities(S: Tensor, embed: Tensor) -> Tensor:
    """S [batch, head, query, key] pre-softmax scores (future keys may be -inf), embed [batch, pos, d]
    token embeddings → [head]: mean over rows i >= 2 of corr_j<=i(S[i, j], 1 - cos(e_i, e_j))."""
    B, H, T, _ = S.shape
    e = F.normalize(embed.float(), dim=-1)
    dis = 1.0 - e @ e.transpose(1, 2)                                   # [batch, query, key]
    causal = torch.ones(T, T, dtype=torch.bool, device=S.device).tril()
    m = causal.float()                                                  # [query, key]
    n = m.sum(-1)                                                       # [query] keys per row
    s = torch.where(causal, S, torch.zeros((), dtype=S.dtype, device=S.device)).float()
    ds = dis[:, None] * m                                               # [batch, 1, query, key]
    s_c = (s - (s * m).sum(-1, keepdim=True) / n[:, None]) * m          # centred over the row's keys
    d_c = (ds - ds.sum(-1, keepdim=True) / n[:, None]) * m
    cov = (s_c * d_c).sum(-1)                                           # [batch, head, query]
    vs, vd = (s_c ** 2).sum(-1), (d_c ** 2).sum(-1)
    ok = (vs > 1e-12 * n) & (vd > 1e-12 * n) & (n >= 3)                 # both vary; at least three keys
    r = torch.where(ok, cov / (vs * vd).clamp_min(1e-30).sqrt(), torch.zeros_like(cov))
    return r.sum(dim=(0, 2)) / ok.float().sum(dim=(0, 2)).clamp_min(1)


@register_measure
class NegativeSimilarity(Measure):
    name = "negative_similarity"
    doc = ("per head, on the train evaluator: per query row i >= 2 the correlation over keys j <= i of the "
           "pre-softmax score with 1 - cos(e_i, e_j), averaged over rows; > 0: it favours tokens unlike its query's")
    record = (SCORES, "hook_embed")
    head_site = SCORES
    role = None                  # a signed correlation, not a share of attention: no threshold makes it a role

    def compute(self, outputs, batches, seam):
        if "train" not in outputs:
            return {}
        rec = outputs["train"][1]
        row = {}
        for L in range(self.shape.layers):                           # type: ignore[union-attr]
            sims = negative_similarities(rec[SCORES.format(L=L)], rec["hook_embed"])
            row.update({head_column(self.name, L, h): v for h, v in enumerate(sims.tolist())})
        return row
