"""The built-in model against an independent, hand-written forward pass (per-head loops)."""
from __future__ import annotations

import math

import pytest
import torch

from clamp.models.builtin import build_model
from clamp.names.sites import ModelShape, catalogue


def reference_forward(m, shape: ModelShape, tokens, vectors=None, is_vector=None):
    P = dict(m.named_parameters())
    B, T = tokens.shape
    h = P["embed.W_E"][tokens].clone()
    if vectors is not None:
        for b in range(B):
            for t in range(T):
                if is_vector[b, t]:
                    h[b, t] = vectors[b, t] @ P["embed.W_x"]
    if shape.pos == "learned":
        h = h + P["pos_embed.W_pos"][:T]

    def ln(x, pre):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * P[pre + ".w"] + P[pre + ".b"]

    def rope(x):                       # x [T, d_head]; rotate pair j at position t by t / 10000^(2j/d)
        out = x.clone()
        d = x.shape[-1]
        for t in range(x.shape[0]):
            for j in range(d // 2):
                th = t / (10000 ** (2 * j / d))
                a, b = x[t, 2 * j], x[t, 2 * j + 1]
                out[t, 2 * j] = a * math.cos(th) - b * math.sin(th)
                out[t, 2 * j + 1] = a * math.sin(th) + b * math.cos(th)
        return out

    for L in range(shape.layers):
        pre = f"blocks.{L}"
        x = ln(h, pre + ".ln1") if shape.norm == "pre" else h
        out = torch.zeros_like(h)
        for b in range(B):
            for hd in range(shape.heads):
                q = x[b] @ P[pre + ".attn.W_Q"][hd]
                k = x[b] @ P[pre + ".attn.W_K"][hd]
                v = x[b] @ P[pre + ".attn.W_V"][hd]
                if shape.pos == "rope":
                    q, k = rope(q), rope(k)
                s = q @ k.T / math.sqrt(shape.d_head)
                s = s + torch.triu(torch.full((T, T), float("-inf")), 1)
                a = torch.softmax(s, -1)
                out[b] += (a @ v) @ P[pre + ".attn.W_O"][hd]
        h = h + out
        if not shape.attn_only:
            x = ln(h, pre + ".ln2") if shape.norm == "pre" else h
            u = torch.nn.functional.gelu(x @ P[pre + ".mlp.W_in"] + P[pre + ".mlp.b_in"])
            h = h + u @ P[pre + ".mlp.W_out"] + P[pre + ".mlp.b_out"]
    if shape.norm == "pre":
        h = ln(h, "ln_final")
    return h @ P["unembed.W_U"] + P["unembed.b_U"]


@pytest.mark.parametrize("attn_only, norm, pos", [(True, "pre", "rope"), (False, "pre", "learned"),
                                                  (True, "none", "none"), (False, "none", "rope")])
def test_forward_matches_hand_written_reference(attn_only, norm, pos):
    shape = ModelShape(layers=2, heads=3, d_model=12, d_head=4, attn_only=attn_only, d_mlp=20, norm=norm,
                       pos=pos, vocab=7, n_out=5, n_ctx=6, vector_dim=3)
    m = build_model(shape, seed=1)
    with torch.no_grad():                 # make LayerNorm and biases non-trivial
        for n, p in m.named_parameters():
            if n.endswith((".w", ".b", "b_U", "b_in", "b_out")):
                p.add_(0.3 * torch.randn(p.shape))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(7, (2, 6), generator=g)
    vectors = torch.randn(2, 6, 3, generator=g)
    is_vector = torch.rand(2, 6, generator=g) > 0.5
    got = m(tokens, vectors, is_vector)
    want = reference_forward(m, shape, tokens, vectors, is_vector)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_parameters_and_hooks_are_the_site_catalogue():
    shape = ModelShape(layers=3, heads=2, d_model=8, d_head=4, attn_only=False, d_mlp=8, vocab=5, n_out=5, n_ctx=4)
    m = build_model(shape, 0)
    cat = [i for i in catalogue(shape) if not i.name.startswith("module:")]      # raw sites: test_usermodel.py
    assert {n for n, _ in m.named_parameters()} == {i.name for i in cat if i.kind == "parameter"}
    assert set(m.hook_points) == {i.name for i in cat if i.kind == "activation"}


def test_identity_hooks_change_nothing():
    shape = ModelShape(layers=2, heads=2, d_model=8, d_head=4, vocab=5, n_out=5, n_ctx=4)
    m = build_model(shape, 0)
    x = torch.randint(5, (3, 4))
    before = m(x)
    for hp in m.hook_points.values():
        hp.fn = lambda t: t + 0.0
    torch.testing.assert_close(m(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 3e-7), (torch.float64, 3e-7), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_rope_is_the_rotation_of_each_pair(dtype, rel, layout):
    """apply_rope (a complex multiply per pair; real arithmetic where the dtype has no complex type)
    against the rotation written out per position and pair in float64: (x0, x1) at position t, pair
    j → (x0 cos θ − x1 sin θ, x0 sin θ + x1 cos θ), θ = t / 10000^(2j/d). A strided input (a slice
    of a wider tensor, as q and k are of the fused projection) gives the same."""
    from clamp.models.builtin import apply_rope, rope_tables
    B, T, H, e = 3, 7, 2, 6
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(B, T, 3, H, e, generator=g, dtype=torch.float64)
    x64 = wide[:, :, 1] if layout == "strided" else wide[:, :, 1].contiguous()   # [batch, pos, head, d_head]
    want = x64.clone()
    for t in range(T):
        for j in range(e // 2):
            th = t / (10000 ** (2 * j / e))
            a, b = x64[:, t, :, 2 * j], x64[:, t, :, 2 * j + 1]
            want[:, t, :, 2 * j] = a * math.cos(th) - b * math.sin(th)
            want[:, t, :, 2 * j + 1] = a * math.sin(th) + b * math.cos(th)
    x = x64.to(dtype)
    got = apply_rope(x, rope_tables(16, e))
    assert got.dtype == dtype and got.shape == x.shape
    # within `rel` of the input's size: the table is float32 (so float64 too), bfloat16 has 8 bits
    assert (got.double() - want).abs().max().item() <= rel * x64.abs().max().item()
