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
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .errors import InputError, did_you_mean, show
from .schema import between, opt
from .sites import Site
from .tasks import Batch


@dataclass
class Context:
    """What a value source may look at during one forward pass."""

    batch: Batch
    model: Any                                   # the Transformer
    cache: dict[str, Tensor]                     # activations recorded earlier in this forward
    step: int = 0


class ValueSource:
    """Base class. `sites`: leaf names it applies to ('*' = any activation)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    sites: ClassVar[tuple[str, ...]] = ("*",)
    ablation: ClassVar[bool] = False             # usable as `ablate: … how: <name>`
    doc: ClassVar[str] = ""

    def __init__(self, options):
        self.options = options

    def applies_to(self, site: Site) -> bool:
        leaf = site.name.rsplit(".", 1)[-1]
        return site.info.kind == "activation" and ("*" in self.sites or leaf in self.sites)

    def needs(self, site: Site) -> tuple[str, ...]:
        """Other activation sites (concrete names) this source reads in the same forward pass."""
        return ()

    def value(self, x: Tensor, site: Site, ctx: Context) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        from .schema import unbuild
        opts = unbuild(self.options)
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")


VALUES: dict[str, type[ValueSource]] = {}


def register_value(cls: type[ValueSource]) -> type[ValueSource]:
    VALUES[cls.name] = cls
    return cls


def get_value(name: str, *, ablation: bool = False) -> type[ValueSource]:
    pool = {k: v for k, v in VALUES.items() if v.ablation or not ablation}
    if name not in pool:
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
    doc = "all zeros"

    def value(self, x, site, ctx):
        return torch.zeros_like(x), None


@register_value
class Mean(ValueSource):
    name, Options, ablation = "mean", NoOptions, True
    doc = "the batch mean at each position (detached)"

    def value(self, x, site, ctx):
        return x.detach().mean(dim=0, keepdim=True).expand_as(x), None


@register_value
class Resample(ValueSource):
    name, Options, ablation = "resample", NoOptions, True
    doc = "the activation of another sequence of the batch (rolled by one; detached)"

    def value(self, x, site, ctx):
        return x.detach().roll(1, dims=0), None


@dataclass(frozen=True)
class ConstantOptions:
    value: float = opt(0.0, doc="the constant")


@register_value
class Constant(ValueSource):
    name, Options = "constant", ConstantOptions
    doc = "a constant everywhere"

    def value(self, x, site, ctx):
        return torch.full_like(x, self.options.value), None


# ---------------------------------------------------------------------------------------
# Ideal attention patterns


@dataclass(frozen=True)
class PreviousTokenOptions:
    strength: float = opt(1.0, check=between(0.0, 1.0), doc="p: weight on the previous position (1-p on itself)")
    rows: str = opt("all", doc="'all' rows, or only rows of one role (few-shot: 'label')")


@register_value
class PreviousToken(ValueSource):
    name, Options, sites = "previous_token", PreviousTokenOptions, ("hook_pattern",)
    doc = "row i puts p on i-1 and 1-p on i (row 0 on itself)"

    def value(self, x, site, ctx):                      # x [batch, head, query, key]
        T = x.shape[-1]
        p = self.options.strength
        pat = torch.eye(T, dtype=x.dtype) * (1 - p)
        idx = torch.arange(1, T)
        pat[idx, idx - 1] = p
        pat[0, 0] = 1.0
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
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            others = causal & (keys == 0)
        others = others.to(x.dtype)
        s = self.options.strength
        pat = s * keys / keys.sum(-1, keepdim=True).clamp_min(1) \
            + (1 - s) * others / others.sum(-1, keepdim=True).clamp_min(1)   # [batch, query, key]
        rows = b.induction_keys[:, :T, :T].any(-1)[:, None, :, None]         # [batch, 1, query, 1]
        return pat[:, None].expand_as(x), rows
