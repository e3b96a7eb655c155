"""Hugging Face transformers behind the model seam, reached through nnsight: the GPT-2 family.

Model layer, beside model.py (the built-in family) and nnsight_seam.py. A recipe asks for it
with `model: {family: gpt2, layers: 2, heads: 4, d_model: 64, config: {...}}`: clamp's shape keys
become GPT2Config's n_layer, n_head, n_embd and n_inner (d_mlp), the task decides vocab_size and
n_positions, `config` passes any other GPT2Config key through; weights are GPT-2's own random
init (seeded), eager attention, no dropout, nothing downloaded.

Sites use the same TransformerLens names, mapped onto GPT-2's modules:

    hook_embed, hook_pos_embed        transformer.wte / transformer.wpe outputs
    blocks.L.attn.hook_pattern        the softmax inside eager attention (nnsight `.source`:
                                      attn.source.attention_interface_1.source.nn_functional_softmax_0)
    blocks.L.hook_attn_out            attn.c_proj output (before the residual add; dropout is off)
    blocks.L.hook_mlp_out             mlp output
    blocks.L.hook_resid_post          the block's output
    hook_logits                       lm_head output

and parameters `blocks.L.attn.W_Q|W_K|W_V` (per head: columns of the fused c_attn weight),
`blocks.L.attn.W_O` (per head: rows of c_proj's weight), `blocks.L.ln1.w|b`, `blocks.L.ln2.w|b`,
`embed.W_E` (wte, tied to the unembedding), `pos_embed.W_pos`, `ln_final.w|b`. A freeze of
`blocks.L.attn.W_Q[h]` holds exactly head h's query columns of c_attn. Only token tasks run on it
(the few-shot task's vector inputs are refused when the recipe is loaded).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .sites import ModelShape, SiteInfo, register_catalogue
from .tasks import Batch

HookFn = Callable[[Tensor], Tensor]


@register_catalogue("gpt2")
def gpt2_catalogue(shape: ModelShape) -> list[SiteInfo]:
    """GPT-2's sites, in forward order."""
    out: list[SiteInfo] = []
    order = itertools.count(1)

    def act(name: str, layout: str, layer: int | None = None, head_axis: int | None = None) -> None:
        out.append(SiteInfo(name, "activation", layer, head_axis is not None, head_axis, layout, next(order)))

    def par(name: str, layout: str, layer: int | None = None, per_head: bool = False) -> None:
        out.append(SiteInfo(name, "parameter", layer, per_head, 0 if per_head else None, layout))

    par("embed.W_E", "[vocab, d_model]")
    par("pos_embed.W_pos", "[n_ctx, d_model]")
    act("hook_embed", "[batch, pos, d_model]")
    act("hook_pos_embed", "[batch, pos, d_model]")
    for L in range(shape.layers):
        b = f"blocks.{L}"
        for ln in ("ln1", "ln2"):
            par(f"{b}.{ln}.w", "[d_model]", L)
            par(f"{b}.{ln}.b", "[d_model]", L)
        for w in ("W_Q", "W_K", "W_V"):
            par(f"{b}.attn.{w}", "[head, d_model, d_head]", L, per_head=True)
        par(f"{b}.attn.W_O", "[head, d_head, d_model]", L, per_head=True)
        act(f"{b}.attn.hook_pattern", "[batch, head, query, key]", L, head_axis=1)
        act(f"{b}.hook_attn_out", "[batch, pos, d_model]", L)
        act(f"{b}.hook_mlp_out", "[batch, pos, d_model]", L)
        act(f"{b}.hook_resid_post", "[batch, pos, d_model]", L)
    par("ln_final.w", "[d_model]")
    par("ln_final.b", "[d_model]")
    act("hook_logits", "[batch, pos, n_out]")
    return out


class GPT2Seam:
    """A GPT2LMHeadModel from config; every forward one nnsight trace with the installed functions."""

    def __init__(self, shape: ModelShape, seed: int):
        from transformers import GPT2Config, GPT2LMHeadModel
        from .nnsight_seam import import_nnsight
        nnsight = import_nnsight()
        cfg = GPT2Config(**dict(shape.config), n_layer=shape.layers, n_head=shape.heads, n_embd=shape.d_model,
                         n_inner=shape.d_mlp, vocab_size=shape.vocab, n_positions=shape.n_ctx,
                         attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None)
        cfg._attn_implementation = "eager"                      # patterns exist only in eager attention
        with torch.random.fork_rng():                          # the init is the seed's, the global RNG untouched
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(cfg)
        self._shape = shape
        self._module = model
        self.nn = nnsight.NNsight(model)
        self._infos = gpt2_catalogue(shape)
        self._order = {i.name: i.order for i in self._infos if i.kind == "activation"}
        self._fns: dict[str, HookFn] = {}
        self._H, self._e = shape.heads, shape.d_model // shape.heads

    @property
    def shape(self) -> ModelShape:
        return self._shape

    @property
    def module(self) -> nn.Module:
        return self._module

    def catalogue(self) -> list[SiteInfo]:
        return self._infos

    def install(self, fns: Mapping[str, HookFn]) -> None:
        self._fns = dict(fns)

    # -- parameters ------------------------------------------------------------------------

    def _param(self, name: str) -> tuple[nn.Parameter, Callable[[Tensor], Tensor], Callable[[tuple[int, ...]], tuple]]:
        """(parameter, view in the catalogue's layout, index of some heads in the parameter)."""
        t: Any = self._module.transformer                   # transformers' modules are untyped here
        H, e = self._H, self._e
        parts = name.split(".")
        if parts[0] == "blocks":
            block = t.h[int(parts[1])]
            leaf = parts[-1]
            if leaf in ("W_Q", "W_K", "W_V"):
                p = block.attn.c_attn.weight                                     # [d, 3·H·e], x @ W
                k = "QKV".index(leaf[-1])

                def cols(heads: tuple[int, ...], k=k) -> tuple:
                    return (slice(None), torch.tensor([k * H * e + h * e + i for h in heads for i in range(e)]))
                def view(w: Tensor, k: int = k) -> Tensor:                       # [H, d, e]
                    return w[:, k * H * e:(k + 1) * H * e].reshape(-1, H, e).transpose(0, 1)
                return p, view, cols
            if leaf == "W_O":
                p = block.attn.c_proj.weight                                     # [H·e, d]

                def rows(heads: tuple[int, ...]) -> tuple:
                    return (torch.tensor([h * e + i for h in heads for i in range(e)]),)
                return p, (lambda w: w.reshape(H, e, -1)), rows
            ln = block.ln_1 if parts[2] == "ln1" else block.ln_2
            return (ln.weight if leaf == "w" else ln.bias), (lambda w: w), _whole
        p = {"embed.W_E": t.wte.weight, "pos_embed.W_pos": t.wpe.weight,
             "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias}[name]
        return p, (lambda w: w), _whole

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        p, _, index = self._param(site)
        return p, (slice(None),) if heads is None else index(heads)

    def weight(self, name: str) -> Tensor:
        p, view, _ = self._param(name)
        return view(p)

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        raise NotImplementedError("gpt2 does not rebuild attention from given residuals "
                                  "(previous_token_input is a built-in-model clamp)")

    # -- forward ---------------------------------------------------------------------------

    def _envoy(self, site: str) -> Any:
        t = self.nn.transformer
        if site == "hook_embed":
            return t.wte
        if site == "hook_pos_embed":
            return t.wpe
        if site == "hook_logits":
            return self.nn.lm_head
        _, L, *rest = site.split(".")
        block = t.h[int(L)]
        leaf = rest[-1]
        if leaf == "hook_pattern":
            return block.attn.source.attention_interface_1.source.nn_functional_softmax_0
        return {"hook_attn_out": block.attn.c_proj, "hook_mlp_out": block.mlp, "hook_resid_post": block}[leaf]

    def forward(self, batch: Batch) -> Tensor:
        """Logits [batch, pos, vocab]: one trace, each installed function at its site."""
        sites = sorted(self._fns, key=lambda n: self._order[n])      # nnsight needs forward order
        with self.nn.trace(batch.tokens):
            for name in sites:
                envoy = self._envoy(name)
                envoy.output = self._fns[name](envoy.output)
            logits = self.nn.output.logits.save()
        return logits


def _whole(heads: tuple[int, ...]) -> tuple:
    return (slice(None),)


def build_gpt2(shape: ModelShape, seed: int) -> GPT2Seam:
    return GPT2Seam(shape, seed)
