"""The residual stream as it entered block 0, and the layer-0 ideal built from it.

Model layer (values/): built-in value sources, registered on import.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Context, NoOptions, ValueSource, register_value


def embedding_residual(ctx: Context) -> Tensor:
    """The residual stream entering block 0: token/vector embedding (+ learned positions)."""
    r = ctx.cache["hook_embed"]
    if "hook_pos_embed" in ctx.cache:
        r = r + ctx.cache["hook_pos_embed"]
    return r


def _embedding_needs(shape) -> tuple[str, ...]:
    return ("hook_embed", "hook_pos_embed") if shape.pos == "learned" else ("hook_embed",)


@register_value
class Embedding(ValueSource):
    name, Options = "embedding", NoOptions
    sites = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
    doc = "the residual stream as it entered block 0 (the raw embedding): everything before is skipped"

    def needs(self, site, shape):
        return _embedding_needs(shape)

    def value(self, x, site, ctx):
        return embedding_residual(ctx).expand_as(x), None


@register_value
class PreviousTokenInput(ValueSource):
    name, Options, sites = "previous_token_input", NoOptions, ("hook_attn_scores", "hook_pattern")
    doc = ("the 'perfect previous-token input' (layer-0 ideal): patterns from the layer's own W_Q/W_K, with "
           "queries from each position's embedding and keys from the embedding of the position before it "
           "(position 0 its own), as if earlier layers were ideal previous-token heads; at hook_attn_scores the "
           "pre-softmax scores")

    def needs(self, site, shape):
        return _embedding_needs(shape)

    def check(self, site, shape):
        if shape.family != "builtin":                    # it rebuilds the layer's scores from its own weights
            return ("to", f"previous_token_input on {shape.family}",
                    "the built-in model (on other families: previous_token)")
        return None

    def value(self, x, site, ctx):                      # x [batch, head, query, key]
        r = embedding_residual(ctx)                      # [batch, pos, d_model]
        shifted = torch.cat([r[:, :1], r[:, :-1]], dim=1)
        scores = ctx.seam.attention_scores(site.info.layer, r, shifted)       # [batch, head, query, key]
        return (scores.softmax(-1) if site.name.endswith("hook_pattern") else scores), None


