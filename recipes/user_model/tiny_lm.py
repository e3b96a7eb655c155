"""A plug-in: a small pre-norm transformer written in plain PyTorch, with its clamp adapter.

Listed by a recipe's `plugins:` (tiny_lm.yaml beside it), which makes clamp import this file;
`model: {module: "tiny_lm:tiny_lm"}` then builds the model with `tiny_lm(...)`. The decorator
tells clamp where the parts are: the pattern is the inline `torch.softmax` inside
`Attention.forward`, reached through nnsight's `.source`.
"""
from __future__ import annotations

import torch
from torch import nn

import clamp


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, d_head: int):
        super().__init__()
        self.heads, self.d_head = heads, d_head
        self.q = nn.Linear(d_model, heads * d_head, bias=False)
        self.k = nn.Linear(d_model, heads * d_head, bias=False)
        self.v = nn.Linear(d_model, heads * d_head, bias=False)
        self.o = nn.Linear(heads * d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # [batch, pos, d_model]
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.heads, self.d_head).transpose(1, 2)      # [batch, head, pos, d_head]
        k = self.k(x).view(B, T, self.heads, self.d_head).transpose(1, 2)
        v = self.v(x).view(B, T, self.heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / self.d_head ** 0.5                 # [batch, head, query, key]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = torch.softmax(scores, dim=-1)
        z = (pattern @ v).transpose(1, 2).reshape(B, T, -1)                   # [batch, pos, head·d_head]
        return self.o(z)


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, d_head: int, d_mlp: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, d_head)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, layers: int, heads: int, d_model: int, d_head: int, d_mlp: int, vocab: int, n_ctx: int,
                 embed_std: float = 0.02):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList([Block(d_model, heads, d_head, d_mlp) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab, bias=False)
        for p in self.parameters():                       # GPT-2-style small init ...
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        for emb in (self.embed, self.pos):                # ... embeddings as the option says
            nn.init.normal_(emb.weight, std=embed_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:                 # [batch, pos] → [batch, pos, vocab]
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


@clamp.model_factory(clamp.Adapter(
    blocks="blocks", attn="attn", pattern="source.torch_softmax_0", q="q", k="k", v="v", o="o",
    mlp="mlp", norms=("ln1", "ln2"), embed="embed", pos_embed="pos", final_norm="ln_f", unembed="unembed"))
def tiny_lm(*, layers: int, heads: int, d_model: int, d_head: int, vocab: int, n_ctx: int,
            mlp_ratio: int = 4, embed_std: float = 1.0) -> TinyLM:
    """embed_std 1.0 (nn.Embedding's own init, as the built-in model on repeated tokens): with GPT-2's
    0.02 this model, like GPT-2, forms no induction head in 3000 steps (benchmarks/RESULTS.md)."""
    return TinyLM(layers, heads, d_model, d_head, mlp_ratio * d_model, vocab, n_ctx, embed_std)
