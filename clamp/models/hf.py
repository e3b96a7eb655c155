"""Hugging Face transformers behind the model seam: GPT-2, GPT-NeoX, Llama from config.

Model layer, beside model.py (the built-in family) and adapter.py (which does the work). A recipe
asks for one with `model: {family: gpt2 | gpt_neox | llama, layers: 2, heads: 4, d_model: 64,
d_mlp: 0, config: {...}}`: clamp's shape keys become the config's layer, head, width and MLP-width
keys, the task decides the vocabulary and positions, `config` passes any other key of the
family's config through; weights are the family's own random init (seeded), eager attention (so
patterns exist), no dropout, nothing downloaded. A `Family` record per architecture is its config
and model class, its shape keys and its `Adapter`: where its parts are, e.g. GPT-2's pattern is
the softmax inside eager attention, reached with nnsight's `.source`
(`attn.source.attention_interface_1.source.nn_functional_softmax_0`), and its W_Q/W_K/W_V are
per-head column blocks of the fused Conv1D `c_attn`. Sites and parameters are adapter.py's.
Only token tasks run on these families (vector inputs are refused when the recipe is loaded).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..names.sites import ModelShape
from .adapter import AdaptedSeam, Adapter

_EAGER_SOFTMAX = "source.attention_interface_1.source.nn_functional_softmax_0"


@dataclass(frozen=True)
class Family:
    """A transformers architecture: its classes, the config keys of clamp's shape, its adapter."""

    name: str
    config: str                    # the transformers config class
    model: str                     # the CausalLM class
    shape_keys: tuple[str, str, str, str, str, str]   # layers, heads, width, mlp width, vocab, positions
    adapter: Adapter
    pos: str                       # how it encodes positions ('learned' | 'rope'), for the ModelShape
    extra: tuple[tuple[str, Any], ...] = ()                # config keys clamp fixes (no dropout, no tokens)
    from_shape: tuple[tuple[str, str], ...] = ()           # further config keys set from the shape: (key, shape field)
    reserved: tuple[str, ...] = ()                         # further config keys clamp sets itself


FAMILIES = {
    "gpt2": Family("gpt2", "GPT2Config", "GPT2LMHeadModel",
                   ("n_layer", "n_head", "n_embd", "n_inner", "vocab_size", "n_positions"),
                   Adapter(blocks="transformer.h", attn="attn", pattern=_EAGER_SOFTMAX, qkv="c_attn", o="c_proj",
                           layout="conv1d", mlp="mlp", norms=("ln_1", "ln_2"), embed="transformer.wte",
                           pos_embed="transformer.wpe", final_norm="transformer.ln_f", unembed="lm_head"),
                   "learned", extra=(("attn_pdrop", 0.0), ("resid_pdrop", 0.0), ("embd_pdrop", 0.0))),
    "llama": Family("llama", "LlamaConfig", "LlamaForCausalLM",
                    ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size",
                     "max_position_embeddings"),
                    Adapter(blocks="model.layers", attn="self_attn", pattern=_EAGER_SOFTMAX, q="q_proj", k="k_proj",
                            v="v_proj", o="o_proj", mlp="mlp", norms=("input_layernorm", "post_attention_layernorm"),
                            embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head"),
                    "rope", extra=(("attention_dropout", 0.0),), from_shape=(("num_key_value_heads", "heads"),),
                    reserved=("head_dim",)),
    "gpt_neox": Family("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
                       ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size",
                        "max_position_embeddings"),
                       Adapter(blocks="gpt_neox.layers", attn="attention", pattern=_EAGER_SOFTMAX,
                               qkv="query_key_value", fused="per_head", o="dense", mlp="mlp",
                               norms=("input_layernorm", "post_attention_layernorm"), embed="gpt_neox.embed_in",
                               final_norm="gpt_neox.final_layer_norm", unembed="lm_head"),
                       "rope", extra=(("attention_dropout", 0.0), ("hidden_dropout", 0.0))),
}
# config keys clamp sets itself, per family (the recipe's `config` may not)
RESERVED = {name: f.shape_keys + tuple(k for k, _ in f.from_shape) + f.reserved for name, f in FAMILIES.items()}


def shape_of(base: ModelShape) -> ModelShape:
    """The family's facts filled into a shape from the recipe's keys: MLPs, pre-norm, its positions."""
    f = FAMILIES[base.family]
    return replace(base, d_head=base.d_model // base.heads, attn_only=False, norm="pre", pos=f.pos)


def module(shape: ModelShape, device: str | None = None) -> torch.nn.Module:
    """The CausalLM from its config, randomly initialised (the caller seeds the RNG)."""
    import transformers
    f = FAMILIES[shape.family]
    L, H, D, M, V, T = f.shape_keys
    kw = {**dict(shape.config), L: shape.layers, H: shape.heads, D: shape.d_model, M: shape.d_mlp,
          V: shape.vocab, T: shape.n_ctx, **dict(f.extra), "bos_token_id": None, "eos_token_id": None,
          "pad_token_id": None, **{k: getattr(shape, field) for k, field in f.from_shape}}
    cfg = getattr(transformers, f.config)(**kw)
    cfg._attn_implementation = "eager"                      # patterns exist only in eager attention
    with torch.device(device or "cpu"):
        return getattr(transformers, f.model)(cfg)


def build(shape: ModelShape, seed: int) -> AdaptedSeam:
    with torch.random.fork_rng():                          # the init is the seed's, the global RNG untouched
        torch.manual_seed(seed)
        model = module(shape)
    return AdaptedSeam(model, FAMILIES[shape.family].adapter, shape, f"the {shape.family} model")
