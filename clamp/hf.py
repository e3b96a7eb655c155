"""Hugging Face transformers behind the model seam, reached through nnsight: GPT-2, GPT-NeoX, Llama.

Model layer, beside model.py (the built-in family) and nnsight_seam.py. A recipe asks for one
with `model: {family: gpt2 | gpt_neox | llama, layers: 2, heads: 4, d_model: 64, d_mlp: 0, config: {...}}`:
clamp's shape keys become the config's layer, head, width and MLP-width keys, the task decides
the vocabulary and positions, `config` passes any other key of the family's config through;
weights are the family's own random init (seeded), eager attention, no dropout, nothing
downloaded. A small `Family` record per architecture says where its parts are.

Sites use the same TransformerLens names, mapped onto the family's modules:

    hook_embed, hook_pos_embed        the token (and, GPT-2, position) embedding outputs
    blocks.L.attn.hook_pattern        the softmax inside eager attention (nnsight `.source`:
                                      <attn>.source.attention_interface_1.source.nn_functional_softmax_0)
    blocks.L.hook_attn_out            the attention's output projection (c_proj | o_proj)
    blocks.L.hook_mlp_out             the MLP's output
    blocks.L.hook_resid_post          the block's output
    hook_logits                       lm_head output

and parameters `blocks.L.attn.W_Q|W_K|W_V|W_O` per head (GPT-2: columns of the fused c_attn and
rows of c_proj; GPT-NeoX: each head's rows of query_key_value and columns of dense; Llama: rows
of q/k/v_proj and columns of o_proj), `blocks.L.ln1|ln2.w` (and `.b`
where the norm has a bias), `embed.W_E`, `pos_embed.W_pos` (GPT-2), `ln_final.w` (`.b`). A freeze
of `blocks.L.attn.W_Q[h]` holds exactly head h's slice of the fused or separate weight. Only
token tasks run on these families (vector inputs are refused when the recipe is loaded).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .sites import ModelShape, SiteInfo, register_catalogue
from .tasks import Batch

HookFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Family:
    """Where a transformers architecture keeps its parts (paths below the CausalLM module)."""

    name: str
    config: str                    # the transformers config class
    model: str                     # the CausalLM class
    shape_keys: tuple[str, str, str, str, str, str]   # layers, heads, width, mlp width, vocab, positions
    blocks: str
    embed: str
    pos_embed: str | None
    attn: str                      # the attention module inside a block
    attn_out: str                  # its output projection, inside the block
    lns: tuple[str, str]           # the two norms inside a block
    ln_bias: bool
    final_ln: str
    qkv: str                       # 'c_attn': GPT-2's fused [d, 3·H·e] (x @ W, Q|K|V blocks of heads);
                                   # 'neox': query_key_value [H·3·e, d] (x @ W.T, each head's q, k, v together);
                                   # 'separate': q/k/v_proj [H·e, d] (x @ W.T)
    lm_head: str = "lm_head"
    extra: tuple[tuple[str, Any], ...] = ()                # config keys clamp fixes (no dropout, no tokens)


FAMILIES = {
    "gpt2": Family("gpt2", "GPT2Config", "GPT2LMHeadModel",
                   ("n_layer", "n_head", "n_embd", "n_inner", "vocab_size", "n_positions"),
                   "transformer.h", "transformer.wte", "transformer.wpe", "attn", "attn.c_proj", ("ln_1", "ln_2"),
                   True, "transformer.ln_f", "c_attn",
                   extra=(("attn_pdrop", 0.0), ("resid_pdrop", 0.0), ("embd_pdrop", 0.0))),
    "llama": Family("llama", "LlamaConfig", "LlamaForCausalLM",
                    ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size",
                     "max_position_embeddings"),
                    "model.layers", "model.embed_tokens", None, "self_attn", "self_attn.o_proj",
                    ("input_layernorm", "post_attention_layernorm"), False, "model.norm", "separate",
                    extra=(("attention_dropout", 0.0),)),
    "gpt_neox": Family("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
                       ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size",
                        "max_position_embeddings"),
                       "gpt_neox.layers", "gpt_neox.embed_in", None, "attention", "attention.dense",
                       ("input_layernorm", "post_attention_layernorm"), True, "gpt_neox.final_layer_norm", "neox",
                       lm_head="embed_out", extra=(("attention_dropout", 0.0), ("hidden_dropout", 0.0))),
}
# keys clamp sets itself, per family (the recipe's `config` may not)
RESERVED = {name: f.shape_keys + (("num_key_value_heads",) if name == "llama" else ())
            for name, f in FAMILIES.items()}


def _catalogue(f: Family) -> Callable[[ModelShape], list[SiteInfo]]:
    def catalogue(shape: ModelShape) -> list[SiteInfo]:
        """The family's sites, in forward order."""
        out: list[SiteInfo] = []
        order = itertools.count(1)

        def act(name: str, layout: str, layer: int | None = None, head_axis: int | None = None) -> None:
            out.append(SiteInfo(name, "activation", layer, head_axis is not None, head_axis, layout, next(order)))

        def par(name: str, layout: str, layer: int | None = None, per_head: bool = False) -> None:
            out.append(SiteInfo(name, "parameter", layer, per_head, 0 if per_head else None, layout))

        par("embed.W_E", "[vocab, d_model]")
        if f.pos_embed:
            par("pos_embed.W_pos", "[n_ctx, d_model]")
        act("hook_embed", "[batch, pos, d_model]")
        if f.pos_embed:
            act("hook_pos_embed", "[batch, pos, d_model]")
        for L in range(shape.layers):
            b = f"blocks.{L}"
            for ln in ("ln1", "ln2"):
                par(f"{b}.{ln}.w", "[d_model]", L)
                if f.ln_bias:
                    par(f"{b}.{ln}.b", "[d_model]", L)
            for w in ("W_Q", "W_K", "W_V"):
                par(f"{b}.attn.{w}", "[head, d_model, d_head]", L, per_head=True)
            par(f"{b}.attn.W_O", "[head, d_head, d_model]", L, per_head=True)
            act(f"{b}.attn.hook_pattern", "[batch, head, query, key]", L, head_axis=1)
            act(f"{b}.hook_attn_out", "[batch, pos, d_model]", L)
            act(f"{b}.hook_mlp_out", "[batch, pos, d_model]", L)
            act(f"{b}.hook_resid_post", "[batch, pos, d_model]", L)
        par("ln_final.w", "[d_model]")
        if f.ln_bias:
            par("ln_final.b", "[d_model]")
        act("hook_logits", "[batch, pos, n_out]")
        return out
    return catalogue


for _f in FAMILIES.values():
    register_catalogue(_f.name)(_catalogue(_f))


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _whole(heads: tuple[int, ...]) -> tuple:
    return (slice(None),)


class HFSeam:
    """A transformers CausalLM from config; every forward one nnsight trace with the installed functions."""

    def __init__(self, shape: ModelShape, seed: int):
        import transformers
        from .nnsight_seam import import_nnsight
        nnsight = import_nnsight()
        f = FAMILIES[shape.family]
        L, H, D, M, V, T = f.shape_keys
        kw = {**dict(shape.config), L: shape.layers, H: shape.heads, D: shape.d_model, M: shape.d_mlp,
              V: shape.vocab, T: shape.n_ctx, **dict(f.extra),
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
        if f.name == "llama":
            kw["num_key_value_heads"] = shape.heads
        cfg = getattr(transformers, f.config)(**kw)
        cfg._attn_implementation = "eager"                      # patterns exist only in eager attention
        with torch.random.fork_rng():                          # the init is the seed's, the global RNG untouched
            torch.manual_seed(seed)
            model = getattr(transformers, f.model)(cfg)
        self.family = f
        self._shape = shape
        self._module = model
        self.nn = nnsight.NNsight(model)
        self._infos = _catalogue(f)(shape)
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

    def _param(self, name: str) -> tuple[Any, Callable[[Tensor], Tensor], Callable[[tuple[int, ...]], tuple]]:
        """(parameter, view in the catalogue's layout, index of some heads in the parameter)."""
        f, m = self.family, self._module
        H, e = self._H, self._e
        parts = name.split(".")
        if parts[0] != "blocks":
            path = {"embed.W_E": f.embed, "pos_embed.W_pos": f.pos_embed or "", "ln_final.w": f.final_ln,
                    "ln_final.b": f.final_ln}[name]
            p = _get(m, path + (".bias" if name.endswith(".b") else ".weight"))
            return p, (lambda w: w), _whole
        block = _get(m, f"{f.blocks}.{parts[1]}")
        leaf = parts[-1]
        if parts[2] in ("ln1", "ln2"):
            ln = _get(block, f.lns[parts[2] == "ln2"])
            return (ln.weight if leaf == "w" else ln.bias), (lambda w: w), _whole

        def span(heads: tuple[int, ...], base: int = 0) -> Tensor:
            return torch.tensor([base + h * e + i for h in heads for i in range(e)])
        if leaf == "W_O":
            p = _get(block, f.attn_out).weight
            if f.qkv == "c_attn":                                             # c_proj [H·e, d]
                return p, (lambda w: w.reshape(H, e, -1)), (lambda hs: (span(hs),))
            return p, (lambda w: w.reshape(-1, H, e).permute(1, 2, 0)), (lambda hs: (slice(None), span(hs)))
        k = "QKV".index(leaf[-1])
        if f.qkv == "neox":                                                   # query_key_value [H·3·e, d]
            p = _get(block, f"{f.attn}.query_key_value").weight

            def interleaved(w: Tensor, k: int = k) -> Tensor:                 # [H, d, e]
                return w.reshape(H, 3, e, -1)[:, k].transpose(1, 2)
            return p, interleaved, (lambda hs, k=k: (torch.tensor([h * 3 * e + k * e + i for h in hs
                                                                    for i in range(e)]),))
        if f.qkv == "c_attn":                                                 # c_attn [d, 3·H·e]
            p = _get(block, f"{f.attn}.c_attn").weight

            def fused(w: Tensor, k: int = k) -> Tensor:                       # [H, d, e]
                return w[:, k * H * e:(k + 1) * H * e].reshape(-1, H, e).transpose(0, 1)
            return p, fused, (lambda hs, k=k: (slice(None), span(hs, k * H * e)))
        p = _get(block, f"{f.attn}.{'qkv'[k]}_proj").weight                   # [H·e, d], x @ W.T
        return p, (lambda w: w.reshape(H, e, -1).transpose(1, 2)), (lambda hs: (span(hs),))

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        p, _, index = self._param(site)
        return p, (slice(None),) if heads is None else index(heads)

    def weight(self, name: str) -> Tensor:
        p, view, _ = self._param(name)
        return view(p)

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.family.name} does not rebuild attention from given residuals "
                                  "(previous_token_input is a built-in-model clamp)")

    # -- forward ---------------------------------------------------------------------------

    def _envoy(self, site: str) -> Any:
        f = self.family
        if site == "hook_embed":
            return _get(self.nn, f.embed)
        if site == "hook_pos_embed":
            return _get(self.nn, f.pos_embed or "")
        if site == "hook_logits":
            return _get(self.nn, f.lm_head)
        _, L, *rest = site.split(".")
        block = _get(self.nn, f"{f.blocks}.{L}")
        leaf = rest[-1]
        if leaf == "hook_pattern":
            return _get(block, f.attn).source.attention_interface_1.source.nn_functional_softmax_0
        return {"hook_attn_out": _get(block, f.attn_out), "hook_mlp_out": block.mlp, "hook_resid_post": block}[leaf]

    def forward(self, batch: Batch) -> Tensor:
        """Logits [batch, pos, vocab]: one trace, each installed function at its site."""
        sites = sorted(self._fns, key=lambda n: self._order[n])      # nnsight needs forward order
        with self.nn.trace(batch.tokens):
            for name in sites:
                envoy = self._envoy(name)
                envoy.output = self._fns[name](envoy.output)
            logits = self.nn.output.logits.save()
        return logits


def build(shape: ModelShape, seed: int) -> HFSeam:
    return HFSeam(shape, seed)
