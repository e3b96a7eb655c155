"""Value sources: what a clamp or an ablation sets a site to.

Sits beside tasks/ and model.py, before spec (which checks a recipe's `to:`/`how:` and
options against this registry) and compile/hooks (which call `value`). A value source is
data: a name and a frozen options dataclass, printable in a plan and savable in a recipe.

`value(x, site, ctx)` gets the activation `x` at the site (full tensor, all heads) and a
`Context` (the batch, the model, activations recorded earlier in the same forward pass),
and returns `(v, rows)`: a tensor of x's shape and an optional boolean mask (broadcastable
to x) of the elements to replace; the hook combines that with the head selection and
writes `where(mask, v, x)`, so no gradient reaches what produced the replaced elements.

Register new sources with `@register_value`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from .errors import InputError, did_you_mean, show
from .registry import decorator
from .schema import between, opt, positive
from .sites import Site
from .tasks import Batch


@dataclass
class Context:
    """What a value source may look at during one forward pass."""

    batch: Batch
    seam: Any                                    # the model, behind the seam (seam.ModelSeam)
    cache: dict[str, Tensor]                     # activations recorded earlier in this forward
    step: int = 0
    seed: int = 0
    reference: dict[str, Tensor] | None = None   # activations of the reference pass (preserve)
    # another run's model at a checkpoint step, as an object with `.activation(batch, site)`
    # (the run layer supplies it: donor.py); None where no run directory can be read
    donor: Callable[[str, int], Any] | None = None


class ValueSource:
    """Base class. `sites`: leaf names it applies to ('*' = any activation)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    sites: ClassVar[tuple[str, ...]] = ("*",)
    ablation: ClassVar[bool] = False             # usable as `ablate: … how: <name>`
    detached: ClassVar[bool] = False             # its value carries no gradient from the model
    doc: ClassVar[str] = ""

    def __init__(self, options):
        self.options = options

    def applies_to(self, site: Site) -> bool:
        leaf = site.name.rsplit(".", 1)[-1]
        return site.info.kind == "activation" and ("*" in self.sites or leaf in self.sites)

    def needs(self, site: Site, shape) -> tuple[str, ...]:
        """Other activation sites (concrete names) this source reads in the same forward pass."""
        return ()

    def check(self, site: Site, shape) -> tuple[str, str, str] | None:
        """(option key, found, expected) if the options do not fit this site of this model."""
        return None

    def value(self, x: Tensor, site: Site, ctx: Context) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        from .schema import unbuild
        opts = unbuild(self.options)
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")


VALUES: dict[str, type[ValueSource]] = {}


register_value = decorator(VALUES, "value source")
"""`@register_value` (or `@register_value(replace=True)`): a taken name is refused unless replaced on purpose."""


def get_value(name: str, *, ablation: bool = False) -> type[ValueSource]:
    pool = {k: v for k, v in VALUES.items() if v.ablation or not ablation}
    if not isinstance(name, str) or name not in pool:
        what = "an ablation" if ablation else "a value source"
        raise InputError("", "", show(name), f"{what}: one of " + ", ".join(sorted(pool)),
                         did_you_mean(str(name), pool))
    return pool[name]


@dataclass(frozen=True)
class NoOptions:
    pass


def row_mask(batch: Batch, rows: str, T: int) -> Tensor | None:
    """[batch, 1, query, 1] mask of the query rows with the given role; None for 'all'."""
    if rows == "all":
        return None
    if rows not in batch.roles:
        raise InputError("", "rows", show(rows), "'all' or a position role of this task: "
                         + ", ".join(sorted(batch.roles)), did_you_mean(rows, batch.roles))
    return batch.roles[rows][:, None, :T, None]


# ---------------------------------------------------------------------------------------
# Ablations (also usable as clamps)


@register_value
class Zero(ValueSource):
    name, Options, ablation = "zero", NoOptions, True
    detached = True
    doc = "all zeros"

    def value(self, x, site, ctx):
        return torch.zeros_like(x), None


@register_value
class Mean(ValueSource):
    name, Options, ablation = "mean", NoOptions, True
    detached = True
    doc = "the batch mean at each position (detached)"

    def value(self, x, site, ctx):
        return x.detach().mean(dim=0, keepdim=True).expand_as(x), None


@register_value
class Resample(ValueSource):
    name, Options, ablation = "resample", NoOptions, True
    detached = True
    doc = "the activation of another sequence of the batch (rolled by one; detached)"

    def value(self, x, site, ctx):
        return x.detach().roll(1, dims=0), None


@dataclass(frozen=True)
class ConstantOptions:
    value: float = opt(0.0, doc="the constant")


@register_value
class Constant(ValueSource):
    name, Options = "constant", ConstantOptions
    detached = True
    doc = "a constant everywhere"

    def value(self, x, site, ctx):
        return torch.full_like(x, self.options.value), None


# ---------------------------------------------------------------------------------------
# Ideal attention patterns


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
        others = b.induction_others[:, :T, :T] if b.induction_others is not None else None
        if others is None or not others.any():
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            others = causal & (keys == 0)
        others = others.to(x.dtype)
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
    from .sites import expand
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


@dataclass(frozen=True)
class GraftOptions:
    run: str = opt("", doc="run directory of the donor, relative to the recipe file ({seed} becomes this run's seed)",
                   path=True)
    step: int = opt(-1, doc="checkpoint step of the donor (-1: its last)")


@register_value
class Graft(ValueSource):
    name, Options = "graft", GraftOptions
    doc = ("the activation of another run's checkpoint at the same site on the same batch (evaluated with "
           "that run's own interventions at that step)")

    def check(self, site, shape):
        import os
        run = self.options.run
        if not run:
            return ("run", "no run", "the donor's run directory")
        if "{seed}" not in run and not os.path.isdir(run):
            return ("run", repr(run), "an existing run directory (relative to the recipe file)")
        return None

    def value(self, x, site, ctx):
        if ctx.donor is None:
            raise InputError("", "to", "graft", "a clamp run by clamp's training loop (it loads the donor run)")
        donor = ctx.donor(self.options.run.replace("{seed}", str(ctx.seed)), self.options.step)
        return donor.activation(ctx.batch, site.name).to(x.device, x.dtype), None
