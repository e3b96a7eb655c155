"""Ideal attention patterns: the paper's clamps on hook_pattern and hook_attn_scores.

Model layer (values/): built-in value sources, registered on import (definitions: docs/science.md §1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..names.errors import InputError
from ..names.schema import between, opt, positive
from .base import ValueSource, register_value, row_mask


@dataclass(frozen=True)
class PreviousTokenOptions:
    strength: float = opt(1.0, check=between(0.0, 1.0), doc="p: weight on the previous position (1-p on itself)")
    rows: str = opt("all", doc="'all' rows, or only rows of one role (few-shot: 'label')")
    lag: int = opt(1, check=positive, doc="how far back: row i attends i-lag (2: the token before the previous)")


@register_value
class PreviousToken(ValueSource):
    name, Options, sites = "previous_token", PreviousTokenOptions, ("hook_pattern",)
    doc = "row i puts p on i-lag and 1-p on i (rows before lag on themselves)"

    def value(self, x, site, ctx):                      # x [batch, head, query, key]
        T = x.shape[-1]
        p, lag = self.options.strength, self.options.lag
        pat = torch.eye(T, dtype=x.dtype, device=x.device) * (1 - p)
        idx = torch.arange(lag, T, device=x.device)
        pat[idx, idx - lag] = p
        pat[torch.arange(min(lag, T)), torch.arange(min(lag, T))] = 1.0
        return pat.expand_as(x), row_mask(ctx.batch, self.options.rows, T)


@dataclass(frozen=True)
class InductionOptions:
    strength: float = opt(1.0, check=between(0.0, 1.0),
                          doc="s: total weight on the correct keys (the paper's induction strength is 2s-1)")


@register_value
class Induction(ValueSource):
    name, Options, sites = "induction", InductionOptions, ("hook_pattern",)
    doc = ("rows with induction keys (few-shot: the query) put s on the correct keys and 1-s on the "
           "other keys of the same kind (the other labels; if none, on the remaining allowed keys); "
           "other rows unchanged")

    def value(self, x, site, ctx):                      # x [batch, head, query, key]
        b = ctx.batch
        if b.induction_keys is None:
            raise InputError("", "to", "'induction' on a task without induction keys",
                             "a task whose batches mark induction keys (fewshot, repeat_tokens)")
        T = x.shape[-1]
        keys = b.induction_keys[:, :T, :T].to(x.dtype)                     # [batch, query, key]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        fallback = causal & (keys == 0)                  # the remaining allowed keys
        if b.induction_others is not None:               # its keys, unless the batch marks none (branch-free)
            others = b.induction_others[:, :T, :T]
            fallback = torch.where(others.any(), others, fallback)
        others = fallback.to(x.dtype)
        s = self.options.strength
        pat = s * keys / keys.sum(-1, keepdim=True).clamp_min(1) \
            + (1 - s) * others / others.sum(-1, keepdim=True).clamp_min(1)   # [batch, query, key]
        rows = b.induction_keys[:, :T, :T].any(-1)[:, None, :, None]         # [batch, 1, query, 1]
        return pat[:, None].expand_as(x), rows


@dataclass(frozen=True)
class DisallowOptions:
    rows: str = opt("all", doc="'all' rows, or only rows of one role (few-shot: 'label')")


@register_value
class DisallowPreviousToken(ValueSource):
    name, Options, sites = "disallow_previous_token", DisallowOptions, ("hook_attn_scores",)
    doc = "pre-softmax score of every i -> i-1 pair set to -inf (the head cannot attend to the previous token)"

    def value(self, x, site, ctx):                      # x [batch, head, query, key], pre-softmax
        T = x.shape[-1]
        m = torch.zeros(T, T, dtype=torch.bool, device=x.device)
        i = torch.arange(1, T, device=x.device)
        m[i, i - 1] = True
        rows = row_mask(ctx.batch, self.options.rows, T)
        mask = m if rows is None else m & rows
        return torch.full_like(x, float("-inf")), mask


@dataclass(frozen=True)
class MatchOptions:
    temperature: float = opt(0.0, check=lambda v: None if v >= 0 else "a temperature >= 0",
                             doc="softmax temperature over cos(x_query, x_j); 0 = hard max")


@register_value
class Match(ValueSource):
    name, Options, sites = "match", MatchOptions, ("hook_pattern",)
    doc = ("rows with induction keys (few-shot: the query) attend to the position after each earlier "
           "vector input j with weight softmax(cos(x_query, x_j) / temperature) (0: hard max, ties split)")

    def value(self, x, site, ctx):                      # x [batch, head, query, key]
        b = ctx.batch
        if b.vectors is None or b.induction_keys is None:
            raise InputError("", "to", "'match' on a task without vector inputs",
                             "a task whose inputs are vectors (fewshot)")
        T = x.shape[-1]
        v = torch.nn.functional.normalize(b.vectors[:, :T].float(), dim=-1)   # [batch, pos, dim]
        cos = v @ v.transpose(1, 2)                                          # [batch, query, key]
        earlier = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
        inside = torch.arange(T, device=x.device) < T - 1
        src = b.is_vector[:, None, :T] & earlier & inside                 # exemplar j with j+1 inside
        t = self.options.temperature
        if t == 0:
            best = cos.masked_fill(~src, float("-inf")).amax(-1, keepdim=True)
            w = (src & (cos >= best - 1e-6)).to(x.dtype)
            w = w / w.sum(-1, keepdim=True).clamp_min(1)
        else:
            w = (cos / t).masked_fill(~src, float("-inf")).softmax(-1).nan_to_num(0.0)
        pat = torch.zeros_like(w)
        pat[..., 1:] = w[..., :-1]                                           # weight of j goes to j+1
        rows = b.induction_keys[:, :T, :T].any(-1)[:, None, :, None]
        return pat[:, None].expand_as(x).to(x.dtype), rows


def _head_option(text: str, shape) -> tuple[int, int] | str:
    """'blocks.1.attn.hook_attn_scores[3]' (or hook_pattern) → (layer, head), or what is wrong."""
    from ..names.sites import expand
    try:
        sites = expand(text, shape, "activation")
    except InputError as e:
        return e.expected
    if len(sites) != 1 or sites[0].heads is None or len(sites[0].heads) != 1 or \
            sites[0].name.rsplit(".", 1)[-1] not in ("hook_attn_scores", "hook_pattern"):
        return "one head of an attention layer, e.g. blocks.1.attn.hook_attn_scores[3]"
    layer = sites[0].info.layer
    assert layer is not None                           # attention sites belong to a layer
    return layer, sites[0].heads[0]


@dataclass(frozen=True)
class PerfectCopyOptions:
    head: str = opt("blocks.1.attn.hook_attn_scores[0]",
                    doc="the head whose pre-softmax scores become the logits, e.g. blocks.1.attn.hook_attn_scores[3]")


@register_value
class PerfectCopy(ValueSource):
    name, Options, sites = "perfect_copy", PerfectCopyOptions, ("hook_logits",)
    doc = ("at rows with induction keys (the query): logits -1e9 except the labels in context, whose "
           "logits are the head's pre-softmax scores to their positions (only the match must be learned)")

    def _lh(self):
        layer, head = self.options.head.split(".")[1], self.options.head.rsplit("[", 1)[1].rstrip("]")
        return int(layer), int(head)

    def check(self, site, shape):
        got = _head_option(self.options.head, shape)
        return None if isinstance(got, tuple) else ("head", repr(self.options.head), got)

    def needs(self, site, shape):
        return (f"blocks.{self._lh()[0]}.attn.hook_attn_scores",)

    def value(self, x, site, ctx):                      # x [batch, pos, n_out]
        b = ctx.batch
        L, h = self._lh()
        scores = ctx.cache[f"blocks.{L}.attn.hook_attn_scores"][:, h]        # [batch, query, key]
        T, n_out = x.shape[1], x.shape[2]
        cand = (b.induction_keys | b.induction_others)[:, :T, :T]            # [batch, query, key]
        onehot = torch.nn.functional.one_hot(b.tokens[:, :T], n_out).bool()   # [batch, key, n_out]
        hit = cand[..., None] & onehot[:, None]                              # [batch, query, key, n_out]
        big = scores[..., None].expand_as(hit).masked_fill(~hit, float("-inf"))
        logits = big.logsumexp(dim=2)                                        # [batch, query, n_out]
        logits = logits.masked_fill(~hit.any(2), -1e9)
        rows = b.induction_keys[:, :T, :T].any(-1)[..., None]                # [batch, query, 1]
        return logits.to(x.dtype), rows


