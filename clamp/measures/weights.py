"""What the weights say: the copying score of each head's OV circuit, and K/Q/V composition between layers.

Model layer (measures/): built-in measures computed from the weights, registered on import
(Elhage et al. 2021; definitions: docs/science.md §4).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..names.columns import composition_column
from ..names.sites import ModelShape
from .base import Measure, head_column, register_measure


def _head_mats(seam, L: int, fold_ln: bool = True):
    """Per-head QK [head, d, d], OV [head, d, d] of layer L in the row convention (x @ M),
    with the layer's LayerNorm scale folded into the read side."""
    W_Q, W_K, W_V, W_O = (seam.weight(f"blocks.{L}.attn.{w}") for w in ("W_Q", "W_K", "W_V", "W_O"))
    # [H, d, e] each, W_O [H, e, d]
    if fold_ln and seam.shape.norm == "pre":
        w = seam.weight(f"blocks.{L}.ln1.w")[None, :, None]
        W_Q, W_K, W_V = W_Q * w, W_K * w, W_V * w
    QK = W_Q @ W_K.transpose(1, 2)                                       # [H, d, d]
    OV = W_V @ W_O                                                       # [H, d, d]
    return QK, OV


def _scores(QK2: Tensor, OV2: Tensor, OV1: Tensor) -> dict[str, Tensor]:
    """[h1, h2] matrices of K, Q, V composition scores (plain Frobenius norms)."""
    n = lambda m: m.flatten(-2).norm(dim=-1)  # noqa: E731
    K = n(QK2[None] @ OV1.transpose(1, 2)[:, None])                      # ‖QK2 · OV1ᵀ‖ : keys read OV1
    Q = n(OV1[:, None] @ QK2[None])                                      # ‖OV1 · QK2‖  : queries read OV1
    V = n(OV1[:, None] @ OV2[None])                                      # ‖OV1 · OV2‖  : values read OV1
    d1, dqk, dov = n(OV1)[:, None], n(QK2)[None], n(OV2)[None]
    return {"k": K / (dqk * d1), "q": Q / (dqk * d1), "v": V / (dov * d1)}


@torch.no_grad()
def composition_scores(seam) -> dict[str, float]:
    """Columns `{k,q,v}_composition/blocks.L1.attn.W_O[h1]>blocks.L2.attn.W_{K,Q,V}[h2]` for L1 < L2,
    from the weights of a model behind the seam (seam.py)."""
    row = {}
    shape = seam.shape
    mats = [_head_mats(seam, L) for L in range(shape.layers)]
    for L1 in range(shape.layers):
        for L2 in range(L1 + 1, shape.layers):
            sc = _scores(mats[L2][0], mats[L2][1], mats[L1][1])
            for kind, M in sc.items():
                for h1 in range(shape.heads):
                    for h2 in range(shape.heads):
                        row[composition_column(kind, L1, h1, L2, h2)] = float(M[h1, h2])
    return row


@torch.no_grad()
def copying_scores(seam) -> dict[str, float]:
    """Columns `copying_score/blocks.L.attn.W_O[h]`: Σλ/Σ|λ| over the eigenvalues of each head's direct
    path W_E·OV·W_U (LayerNorm scales folded in), from the weights of a model behind the seam."""
    shape = seam.shape
    W_E, W_U = seam.weight("embed.W_E"), seam.weight("unembed.W_U")     # [vocab, d], [d, n_out]
    if shape.norm == "pre":
        W_U = W_U * seam.weight("ln_final.w")[:, None]
    row = {}
    for L in range(shape.layers):
        OV = _head_mats(seam, L)[1]                                       # [H, d, d]
        lam = torch.linalg.eigvals((W_E[None] @ OV @ W_U[None]).double())  # [H, vocab]
        score = lam.sum(-1).real / lam.abs().sum(-1).clamp_min(1e-30)
        for h, v in enumerate(score.tolist()):
            row[head_column("copying_score", L, h)] = v
    return row


@torch.no_grad()
def composition_baseline(shape: ModelShape, draws: int = 64, seed: int = 0) -> dict[str, float]:
    """Mean score of each kind for weights drawn from the init distribution (≈ 1/√d_model)."""
    g = torch.Generator().manual_seed(seed)
    d, e, H = shape.d_model, shape.d_head, draws
    r = lambda *s, std: torch.randn(*s, generator=g) * std  # noqa: E731
    QK2 = r(H, d, e, std=d ** -0.5) @ r(H, d, e, std=d ** -0.5).transpose(1, 2)
    OV2 = r(H, d, e, std=d ** -0.5) @ r(H, e, d, std=(shape.heads * e) ** -0.5)
    OV1 = r(H, d, e, std=d ** -0.5) @ r(H, e, d, std=(shape.heads * e) ** -0.5)
    sc = _scores(QK2, OV2, OV1)
    return {f"{k}_composition": float(m.mean()) for k, m in sc.items()}


@register_measure
class CopyingScore(Measure):
    name = "copying_score"
    doc = ("per head, from the weights: sum(λ)/sum(|λ|) over the eigenvalues of the direct path W_E·W_V·W_O·W_U "
           "(LayerNorm scales folded in); 1: it raises the logit of the token it attends to")
    head_site = "blocks.{L}.attn.W_O"
    weights = True
    reads = ("embed.W_E", "blocks.{L}.attn.W_V", "blocks.{L}.attn.W_O", "unembed.W_U")

    @classmethod
    def unavailable(cls, task, options, shape):
        io = task.io(options)
        if io.vocab != io.n_out or io.vector_dim:
            return f"{task.name}'s outputs are not its input tokens (no W_E·OV·W_U to take eigenvalues of)"
        return ""

    def compute(self, outputs, batches, seam):
        return copying_scores(seam)


@register_measure
class Composition(Measure):
    name = "composition"
    doc = ("`{k,q,v}_composition/blocks.L1.attn.W_O[h1]>blocks.L2.attn.W_{K,Q,V}[h2]` for L1 < L2, from the weights "
           "(summary.json: composition_baseline, the mean score of weights drawn from the init distribution)")
    weights = True
    reads = ("blocks.{L}.attn.W_Q", "blocks.{L}.attn.W_K", "blocks.{L}.attn.W_V", "blocks.{L}.attn.W_O")

    @classmethod
    def columns(cls, shape, evaluators):
        return [composition_column(k, l1, h1, l2, h2) for k in "kqv" for l1 in range(shape.layers)
                for l2 in range(l1 + 1, shape.layers) for h1 in range(shape.heads) for h2 in range(shape.heads)]

    def summary(self):
        return {"composition_baseline": composition_baseline(self.shape)} if self.shape is not None else {}

    def compute(self, outputs, batches, seam):
        return composition_scores(seam)
