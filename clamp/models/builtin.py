"""The built-in transformer: small, readable, with an identity hook point at every site.

Sits after sites.py (which names what this module builds) and before compile/hooks (which
attach interventions to the hook points). Parameter and hook names are TransformerLens
names (`blocks.0.attn.W_Q`, `blocks.1.attn.hook_pattern`), so `model.named_parameters()`
and `model.hook_points` use exactly the vocabulary of recipes, plans and metrics.

Weights use TransformerLens layouts: W_Q/W_K/W_V [head, d_model, d_head], W_O [head,
d_head, d_model], W_E [vocab, d_model], W_U [d_model, n_out]. A position carries either a
token (embedded by W_E) or a vector (the few-shot exemplars, embedded by the linear map
W_x); both are summed into `hook_embed`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..names.sites import ModelShape, SiteInfo, builtin_catalogue
from ..tasks import Batch

HookFn = Callable[[Tensor], Tensor]


class HookPoint(nn.Module):
    """Identity unless an intervention or a recorder is attached (`fn`); costs one check."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn: HookFn | None = None

    def forward(self, x: Tensor) -> Tensor:
        fn = self.fn
        return x if fn is None else fn(x)

    def extra_repr(self) -> str:
        return self.name


class LayerNorm(nn.Module):
    def __init__(self, d: int, prefix: str):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.hook_normalized = HookPoint(f"{prefix}.hook_normalized")

    def forward(self, x: Tensor) -> Tensor:                    # [batch, pos, d_model]
        if self.hook_normalized.fn is None:                      # fast path, same values
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, eps=1e-5)
        x = self.hook_normalized(F.layer_norm(x, x.shape[-1:], eps=1e-5))
        return x * self.w + self.b


def rope_tables(n_ctx: int, d_head: int, base: float = 10000.0) -> Tensor:
    """The rotation of each interleaved pair (x0,x1), (x2,x3), ... at each position: (cos, sin) of its
    angle, shape [n_ctx, 1, d_head/2, 2] (the 1 broadcasts over heads; the last axis views as one
    unit complex number cos + i·sin)."""
    inv = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)   # [d_head/2]
    ang = torch.arange(n_ctx, dtype=torch.float32)[:, None] * inv[None, :]       # [n_ctx, d_head/2]
    return torch.stack((ang.cos(), ang.sin()), -1)[:, None]


def apply_rope(x: Tensor, rot: Tensor) -> Tensor:
    """x [batch, pos, head, d_head]; rotates each interleaved pair by its position's angle:
    (x0, x1) → (x0 cos − x1 sin, x1 cos + x0 sin). Eager, one complex multiply per pair (a quarter
    of the time of the same rotation written with real tensors; equal to it within 5e-7 in
    float32); compiled (or in a dtype with no complex type), the real form, which the compiler fuses
    into one kernel."""
    T = x.shape[1]
    pairs = x.unflatten(-1, (-1, 2))                                            # [b, p, h, d_head/2, 2]
    if x.dtype not in (torch.float32, torch.float64) or torch.compiler.is_compiling():
        x0, x1 = pairs.unbind(-1)
        c, s = rot[:T].to(x.dtype).unbind(-1)                                   # [pos, 1, d_head/2] each
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), -1).flatten(-2)
    if pairs.storage_offset() % 2 or any(st % 2 for st in pairs.stride()[:-1]) or pairs.stride(-1) != 1:
        pairs = pairs.contiguous()                                              # a view of complex pairs needs it
    return torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rot[:T])).flatten(-2)


SMALL_ATTENTION = 16     # positions up to which compiled attention multiplies and sums instead of a batched matmul


def qk(q: Tensor, k: Tensor) -> Tensor:
    """q [..., query, d_head] · k [..., key, d_head] → [..., query, key]. Compiled, over a few positions,
    as a product and a sum that fuse into one kernel: a batched matmul of thousands of 5×8 matrices
    costs its calls, not its arithmetic."""
    if torch.compiler.is_compiling() and q.shape[-2] <= SMALL_ATTENTION:
        return (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1)
    return q @ k.transpose(-1, -2)


def pv(p: Tensor, v: Tensor) -> Tensor:
    """p [..., query, key] · v [..., key, d_head] → [..., query, d_head] (as `qk`, compiled and small)."""
    if torch.compiler.is_compiling() and p.shape[-2] <= SMALL_ATTENTION:
        return (p.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)
    return p @ v


class Attention(nn.Module):
    hook_q: HookPoint
    hook_k: HookPoint
    hook_v: HookPoint
    hook_rot_q: HookPoint
    hook_rot_k: HookPoint
    hook_attn_scores: HookPoint
    hook_pattern: HookPoint
    hook_z: HookPoint

    def __init__(self, s: ModelShape, layer: int):
        super().__init__()
        H, d, e = s.heads, s.d_model, s.d_head
        p = f"blocks.{layer}.attn"
        self.W_Q = nn.Parameter(torch.empty(H, d, e))
        self.W_K = nn.Parameter(torch.empty(H, d, e))
        self.W_V = nn.Parameter(torch.empty(H, d, e))
        self.W_O = nn.Parameter(torch.empty(H, e, d))
        self.rope = s.pos == "rope"
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z") + \
                (("hook_rot_q", "hook_rot_k") if self.rope else ()):
            setattr(self, name, HookPoint(f"{p}.{name}"))
        self.scale = 1.0 / math.sqrt(e)

    def _qkv_weight(self) -> Tensor:
        H, d, e = self.W_Q.shape
        return torch.stack((self.W_Q, self.W_K, self.W_V)).permute(2, 0, 1, 3).reshape(d, 3 * H * e)

    def forward(self, x: Tensor, mask: Tensor, rope: Tensor | None) -> Tensor:
        B, T, d = x.shape
        H, e = self.W_Q.shape[0], self.W_Q.shape[2]
        q, k, v = (x @ self._qkv_weight()).view(B, T, 3, H, e).unbind(2)   # [batch, pos, head, d_head] each
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if rope is not None:
            q = self.hook_rot_q(apply_rope(q, rope))
            k = self.hook_rot_k(apply_rope(k, rope))
        scores = qk(q.transpose(1, 2), k.transpose(1, 2)) * self.scale       # [batch, head, query, key]
        scores = self.hook_attn_scores(scores.masked_fill(~mask[:T, :T], float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))                 # [batch, head, query, key]
        z = self.hook_z(pv(pattern, v.transpose(1, 2)).transpose(1, 2))     # [batch, pos, head, d_head]
        return z.reshape(B, T, H * e) @ self.W_O.reshape(H * e, d)         # [batch, pos, d_model]

    def scores_from(self, xq: Tensor, xk: Tensor, mask: Tensor, rope) -> Tensor:
        """Masked pre-softmax scores [batch, head, query, key] of this layer's W_Q/W_K applied to
        given (already normalised) query-side and key-side inputs [batch, pos, d_model]; no hooks."""
        return scores_from(self.W_Q, self.W_K, xq, xk, mask, rope)


def scores_from(W_Q: Tensor, W_K: Tensor, xq: Tensor, xk: Tensor, mask: Tensor, rope) -> Tensor:
    """The scores of `Attention.scores_from` for given W_Q, W_K [head, d_model, d_head]."""
    T = xq.shape[1]
    q = torch.einsum("btd,hde->bthe", xq, W_Q)                         # [batch, pos, head, d_head]
    k = torch.einsum("btd,hde->bthe", xk, W_K)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    s = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) * (1.0 / math.sqrt(W_Q.shape[-1]))
    return s.masked_fill(~mask[:T, :T], float("-inf"))


class MLP(nn.Module):
    def __init__(self, s: ModelShape, layer: int):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(s.d_model, s.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(s.d_mlp))
        self.W_out = nn.Parameter(torch.empty(s.d_mlp, s.d_model))
        self.b_out = nn.Parameter(torch.zeros(s.d_model))
        self.hook_pre = HookPoint(f"blocks.{layer}.mlp.hook_pre")
        self.hook_post = HookPoint(f"blocks.{layer}.mlp.hook_post")

    def forward(self, x: Tensor) -> Tensor:                         # [batch, pos, d_model]
        pre = self.hook_pre(x @ self.W_in + self.b_in)             # [batch, pos, d_mlp]
        post = self.hook_post(F.gelu(pre))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, s: ModelShape, layer: int):
        super().__init__()
        p = f"blocks.{layer}"
        self.hook_resid_pre = HookPoint(f"{p}.hook_resid_pre")
        self.ln1 = LayerNorm(s.d_model, f"{p}.ln1") if s.norm == "pre" else None
        self.attn = Attention(s, layer)
        self.hook_attn_out = HookPoint(f"{p}.hook_attn_out")
        self.mlp = None
        if not s.attn_only:
            self.hook_resid_mid = HookPoint(f"{p}.hook_resid_mid")
            self.ln2 = LayerNorm(s.d_model, f"{p}.ln2") if s.norm == "pre" else None
            self.mlp = MLP(s, layer)
            self.hook_mlp_out = HookPoint(f"{p}.hook_mlp_out")
        self.hook_resid_post = HookPoint(f"{p}.hook_resid_post")

    def forward(self, resid: Tensor, mask: Tensor, rope) -> Tensor:   # [batch, pos, d_model]
        resid = self.hook_resid_pre(resid)
        x = self.ln1(resid) if self.ln1 is not None else resid
        resid = resid + self.hook_attn_out(self.attn(x, mask, rope))
        if self.mlp is not None:
            resid = self.hook_resid_mid(resid)
            x = self.ln2(resid) if self.ln2 is not None else resid
            resid = resid + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(resid)


class Embed(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(s.vocab, s.d_model))
        self.W_x = nn.Parameter(torch.empty(s.vector_dim, s.d_model)) if s.vector_dim else None

    def forward(self, tokens: Tensor, vectors: Tensor | None, is_vector: Tensor | None) -> Tensor:
        h = self.W_E[tokens]                                          # [batch, pos, d_model]
        if self.W_x is not None and vectors is not None:
            assert is_vector is not None
            h = torch.where(is_vector[..., None], vectors @ self.W_x, h)
        return h


class Transformer(nn.Module):
    """nanoGPT-sized decoder; `forward(tokens, vectors, is_vector)` → logits [batch, pos, n_out]."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        s = shape
        self.embed = Embed(s)
        self.hook_embed = HookPoint("hook_embed")
        if s.pos == "learned":
            self.pos_embed = nn.Module()
            self.pos_embed.W_pos = nn.Parameter(torch.empty(s.n_ctx, s.d_model))
            self.hook_pos_embed = HookPoint("hook_pos_embed")
        self.blocks = nn.ModuleList(Block(s, L) for L in range(s.layers))
        self.ln_final = LayerNorm(s.d_model, "ln_final") if s.norm == "pre" else None
        self.unembed = nn.Module()
        self.unembed.W_U = nn.Parameter(torch.empty(s.d_model, s.n_out))
        self.unembed.b_U = nn.Parameter(torch.zeros(s.n_out))
        self.hook_logits = HookPoint("hook_logits")
        meta = torch.empty(0).is_meta          # a skeleton (seam.skeleton): shapes only, no arithmetic,
        n = s.n_ctx                            # which on meta tensors would import torch's compiler (~1.5 s)
        self.register_buffer("mask", torch.empty(n, n, dtype=torch.bool) if meta else
                             torch.ones(n, n).tril().bool(), persistent=False)          # [pos, pos]
        if s.pos == "rope":
            rot = torch.empty(n, 1, s.d_head // 2, 2) if meta else rope_tables(n, s.d_head)
            self.register_buffer("rope_rot", rot, persistent=False)                  # [pos, 1, d_head/2, 2]
        self.hook_points: dict[str, HookPoint] = {
            m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    def reset_parameters(self, generator: torch.Generator) -> None:
        """LeCun-normal weights (std 1/sqrt(fan_in)), embeddings N(0, embed_std²), LayerNorm (1, 0)."""
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            with torch.no_grad():
                if leaf in ("w",):
                    p.fill_(1.0)
                elif leaf.startswith("b"):
                    p.zero_()
                elif leaf in ("W_E", "W_pos"):
                    p.normal_(0.0, self.shape.embed_std, generator=generator)
                else:
                    fan_in = p.shape[-2] if leaf != "W_O" else p.shape[0] * p.shape[1]
                    p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)

    rope_rot: Tensor
    mask: Tensor

    @property
    def rope(self) -> Tensor | None:
        return self.rope_rot if self.shape.pos == "rope" else None

    def forward(self, tokens: Tensor, vectors: Tensor | None = None,
                is_vector: Tensor | None = None) -> Tensor:
        resid = self.hook_embed(self.embed(tokens, vectors, is_vector))   # [batch, pos, d_model]
        T = tokens.shape[1]
        if self.shape.pos == "learned":
            W_pos: Tensor = self.pos_embed.W_pos
            resid = resid + self.hook_pos_embed(W_pos[:T].expand_as(resid))
        rope = self.rope
        for block in self.blocks:
            resid = block(resid, self.mask, rope)
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        W_U: Tensor = self.unembed.W_U
        b_U: Tensor = self.unembed.b_U
        return self.hook_logits(resid @ W_U + b_U)                    # [batch, pos, n_out]


def _identity(x: Tensor) -> Tensor:
    return x


def build_model(shape: ModelShape, seed: int) -> Transformer:
    model = Transformer(shape)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    names = {n for n, _ in model.named_parameters()} | set(model.hook_points)
    expected = {i.name for i in builtin_catalogue(shape)}
    assert names == expected, f"model and site catalogue disagree: {sorted(names ^ expected)}"
    return model


class BuiltinSeam:
    """The built-in transformer behind the model seam (seam.py): hook points are its sites."""

    def __init__(self, model: Transformer):
        self.module = model
        self.shape = model.shape
        self._hooks = model.hook_points

    def catalogue(self) -> list[SiteInfo]:
        return builtin_catalogue(self.shape)

    def install(self, fns: Mapping[str, HookFn]) -> None:
        for name, hp in self._hooks.items():
            hp.fn = fns.get(name)

    def run_sites(self, names: list[str]) -> None:
        """Make these hook points run (as identities) though nothing is installed at them, so another
        mechanism (nnsight_seam.py) can reach them: a site without a function may be skipped (e.g.
        LayerNorm's fused fast path skips hook_normalized)."""
        self.install({name: _identity for name in names})

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        p = self.module.get_parameter(site)
        return p, (slice(None),) if heads is None else (torch.tensor(heads),)   # head axis 0

    def weight(self, name: str) -> Tensor:
        return self.module.get_parameter(name)

    def forward(self, batch: Batch) -> Tensor:
        return self.module(batch.tokens, batch.vectors, batch.is_vector)        # [batch, pos, n_out]

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        m = self.module
        block: Block = m.blocks[layer]
        ln = block.ln1
        if ln is not None:                               # the block's LayerNorm, without its hook point
            xq = F.layer_norm(xq, xq.shape[-1:], ln.w, ln.b, 1e-5)
            xk = F.layer_norm(xk, xk.shape[-1:], ln.w, ln.b, 1e-5)
        return block.attn.scores_from(xq, xk, m.mask, m.rope)   # [batch, head, query, key]


def build(shape: ModelShape, seed: int) -> BuiltinSeam:
    """The seam's builder for the family 'builtin'."""
    return BuiltinSeam(build_model(shape, seed))
