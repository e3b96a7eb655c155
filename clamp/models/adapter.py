"""Adapters: where any transformer module keeps its parts, so clamp's site names reach them.

Model layer, beside model.py (the built-in family, which needs no adapter: its modules are its
sites). An `Adapter` is data, a handful of dotted module paths; `AdaptedSeam` puts any torch
module with one behind the model seam (seam.py), reaching activations through nnsight. The
transformers families (hf.py) are adapters clamp ships; a user's own module declares one in
its plug-in (usermodel.py).

Paths are dotted attribute paths (a digit indexes a ModuleList; "" is the module itself), and
`pattern` may pass through nnsight's `.source` to an operation inside a forward, e.g.
`source.torch_softmax_0` for an inline `torch.softmax`. The sites an adapter gives, per block L,
in the order a standard transformer computes them:

    blocks.L.hook_resid_pre          the block's input                          [batch, pos, d_model]
    blocks.L.attn.hook_q|k|v         the q/k/v projection's output, per head    [batch, pos, head, d_head]
    blocks.L.attn.hook_attn_scores   the pattern operation's input (masked)     [batch, head, query, key]
    blocks.L.attn.hook_pattern       the pattern operation's output             [batch, head, query, key]
    blocks.L.attn.hook_z             the output projection's input, per head    [batch, pos, head, d_head]
    blocks.L.hook_attn_out           the output projection's output             [batch, pos, d_model]
    blocks.L.hook_mlp_out            the MLP's output                           [batch, pos, d_model]
    blocks.L.hook_resid_post         the block's output                         [batch, pos, d_model]

and `hook_embed`, `hook_pos_embed`, `hook_logits` around them; parameters `blocks.L.attn.W_Q|W_K|W_V`
[head, d_model, d_head] and `W_O` [head, d_head, d_model] as views of the projections' weights (a
freeze of `W_Q[h]` holds exactly head h's rows or columns, fused or not), `blocks.L.ln1|ln2.w|b`,
`ln_final.w|b`, `embed.W_E`, `pos_embed.W_pos`. A part the adapter leaves out has no sites.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..names.errors import InputError
from ..names.sites import ModelShape, SiteInfo, layout_sizes
from ..tasks import Batch
from .modsites import carried, get

HookFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Adapter:
    """Where a transformer module keeps its parts (see the module docstring for the sites each gives)."""

    blocks: str                            # from the root: the ModuleList of blocks, one per layer
    attn: str = "attn"                     # from a block: its attention module
    pattern: str | None = None             # from attn: the op whose input is the masked scores, output the pattern
    q: str | None = None                   # from attn: separate q, k, v projections ...
    k: str | None = None
    v: str | None = None
    qkv: str | None = None                 # ... or one fused projection
    fused: Literal["stacked", "per_head"] = "stacked"   # fused outputs: [Q|K|V] blocks, or each head's q,k,v together
    o: str | None = None                   # from attn: the output projection (input hook_z, output hook_attn_out)
    layout: Literal["linear", "conv1d"] = "linear"      # projection weights: nn.Linear [out, in], or Conv1D [in, out]
    mlp: str | None = None                 # from a block: the MLP
    norms: tuple[str, ...] = ()            # from a block: the norm before attention (ln1), before the MLP (ln2)
    embed: str | None = None               # from the root: the token embedding (hook_embed, embed.W_E)
    pos_embed: str | None = None           # from the root: learned positions (hook_pos_embed, pos_embed.W_pos)
    final_norm: str | None = None          # from the root: the norm before the unembedding (ln_final)
    unembed: str | None = None             # from the root: the module whose output is the logits (default: the
                                           # model's output, or its `.logits`)

    def problem(self) -> tuple[str, str] | None:
        """(field, what it should be) for an adapter that cannot work, else None."""
        if (self.q or self.k or self.v) and self.qkv:
            return "qkv", "either separate q, k, v or one fused qkv, not both"
        if bool(self.q) + bool(self.k) + bool(self.v) not in (0, 3):
            return "q", "all three of q, k and v, or none"
        if len(self.norms) > 2:
            return "norms", "at most two block norms (before attention, before the MLP)"
        return None


def join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------
# Sites


def adapter_catalogue(a: Adapter, shape: ModelShape, module: nn.Module,
                      seen: Mapping[str, tuple[int, ...]] | None = None) -> list[SiteInfo]:
    """The sites `a` gives on `module` (built for `shape`; a bias exists where the module has one).
    `seen`: each site's shape in a forward of the module; a site whose shape is not the standard
    layout's (a model whose blocks are not [batch, pos, d_model]) is described by its sizes."""
    out: list[SiteInfo] = []
    order = itertools.count(1)

    def act(name: str, layout: str, layer: int | None = None, head_axis: int | None = None) -> None:
        got = (seen or {}).get(name)
        if got is not None and head_axis is None:
            want = layout_sizes(SiteInfo(name, "activation", layer, False, None, layout), shape)
            if want is None or len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
                layout = "[" + ", ".join(["batch", *map(str, got[1:])]) + "]"
        out.append(SiteInfo(name, "activation", layer, head_axis is not None, head_axis, layout, next(order)))

    def par(name: str, layout: str, layer: int | None = None, per_head: bool = False) -> None:
        out.append(SiteInfo(name, "parameter", layer, per_head, 0 if per_head else None, layout))

    def norm(prefix: str, path: str, layer: int | None) -> None:
        par(f"{prefix}.w", "[d_model]", layer)
        if getattr(get(module, path), "bias", None) is not None:
            par(f"{prefix}.b", "[d_model]", layer)

    if a.embed:
        par("embed.W_E", "[vocab, d_model]")
        act("hook_embed", "[batch, pos, d_model]")
    if a.pos_embed:
        par("pos_embed.W_pos", "[n_ctx, d_model]")
        act("hook_pos_embed", "[batch, pos, d_model]")
    for L in range(shape.layers):
        b, block = f"blocks.{L}", join(a.blocks, str(L))
        act(f"{b}.hook_resid_pre", "[batch, pos, d_model]", L)
        for i, ln in enumerate(a.norms):
            norm(f"{b}.ln{i + 1}", join(block, ln), L)
        if a.q or a.qkv:
            for w in ("W_Q", "W_K", "W_V"):
                par(f"{b}.attn.{w}", "[head, d_model, d_head]", L, per_head=True)
            for h in ("hook_q", "hook_k", "hook_v"):
                act(f"{b}.attn.{h}", "[batch, pos, head, d_head]", L, head_axis=2)
        if a.pattern:
            act(f"{b}.attn.hook_attn_scores", "[batch, head, query, key]", L, head_axis=1)
            act(f"{b}.attn.hook_pattern", "[batch, head, query, key]", L, head_axis=1)
        if a.o:
            par(f"{b}.attn.W_O", "[head, d_head, d_model]", L, per_head=True)
            act(f"{b}.attn.hook_z", "[batch, pos, head, d_head]", L, head_axis=2)
            act(f"{b}.hook_attn_out", "[batch, pos, d_model]", L)
        if a.mlp:
            act(f"{b}.hook_mlp_out", "[batch, pos, d_model]", L)
        act(f"{b}.hook_resid_post", "[batch, pos, d_model]", L)
    if a.final_norm:
        norm("ln_final", a.final_norm, None)
    act("hook_logits", "[batch, pos, n_out]")
    return out


@dataclass(frozen=True)
class Route:
    """Where an activation site lives: an envoy path, its input or output, and a per-head view."""

    path: str                                   # from the root ('' is the model itself)
    io: str                                     # 'input' | 'output'
    view: Callable[[Tensor], Tensor]            # the envoy's value → the site's layout
    put: Callable[[Tensor, Tensor], Tensor]     # (envoy's value, new site value) → new envoy value


def _same(x: Tensor) -> Tensor:
    return x


def _replace(x: Tensor, new: Tensor) -> Tensor:
    return new


def _heads(H: int) -> tuple[Callable, Callable]:
    """[batch, pos, H·e] ⇄ [batch, pos, head, e]."""
    return (lambda x: x.unflatten(-1, (H, -1))), (lambda x, new: new.flatten(-2))


def _fused(H: int, k: int, per_head: bool) -> tuple[Callable, Callable]:
    """The k-th of q, k, v in a fused projection's output [batch, pos, 3·H·e]."""
    if per_head:                                                  # [.., H, 3, e]
        def view(x: Tensor) -> Tensor:
            return x.unflatten(-1, (H, 3, -1))[..., k, :]

        def put(x: Tensor, new: Tensor) -> Tensor:
            parts = list(x.unflatten(-1, (H, 3, -1)).unbind(-2))
            parts[k] = new
            return torch.stack(parts, -2).flatten(-3)
        return view, put

    def view_s(x: Tensor) -> Tensor:                              # [.., 3, H, e]
        return x.unflatten(-1, (3, H, -1))[..., k, :, :]

    def put_s(x: Tensor, new: Tensor) -> Tensor:
        parts = list(x.unflatten(-1, (3, H, -1)).unbind(-3))
        parts[k] = new
        return torch.stack(parts, -3).flatten(-3)
    return view_s, put_s


def routes(a: Adapter, shape: ModelShape) -> dict[str, Route]:
    """Every activation site's route (the same names as adapter_catalogue)."""
    H = shape.heads
    out: dict[str, Route] = {}
    if a.embed:
        out["hook_embed"] = Route(a.embed, "output", _same, _replace)
    if a.pos_embed:
        out["hook_pos_embed"] = Route(a.pos_embed, "output", _same, _replace)
    for L in range(shape.layers):
        b, block = f"blocks.{L}", join(a.blocks, str(L))
        attn = join(block, a.attn)
        out[f"{b}.hook_resid_pre"] = Route(block, "input", _same, _replace)
        for k, (name, sep) in enumerate((("hook_q", a.q), ("hook_k", a.k), ("hook_v", a.v))):
            if sep:
                out[f"{b}.attn.{name}"] = Route(join(attn, sep), "output", *_heads(H))
            elif a.qkv:
                out[f"{b}.attn.{name}"] = Route(join(attn, a.qkv), "output", *_fused(H, k, a.fused == "per_head"))
        if a.pattern:
            out[f"{b}.attn.hook_attn_scores"] = Route(join(attn, a.pattern), "input", _same, _replace)
            out[f"{b}.attn.hook_pattern"] = Route(join(attn, a.pattern), "output", _same, _replace)
        if a.o:
            out[f"{b}.attn.hook_z"] = Route(join(attn, a.o), "input", *_heads(H))
            out[f"{b}.hook_attn_out"] = Route(join(attn, a.o), "output", _same, _replace)
        if a.mlp:
            out[f"{b}.hook_mlp_out"] = Route(join(block, a.mlp), "output", _same, _replace)
        out[f"{b}.hook_resid_post"] = Route(block, "output", _same, _replace)
    out["hook_logits"] = Route(a.unembed or "", "output", _same, _replace)
    return out


# ---------------------------------------------------------------------------------------
# Parameters


def _span(heads: tuple[int, ...], e: int, base: int = 0, stride: int = 0) -> Tensor:
    """Indices of the heads' e-wide slices: base + h·(stride or e) + i."""
    return torch.tensor([base + h * (stride or e) + i for h in heads for i in range(e)])


def _whole(heads: tuple[int, ...]) -> tuple:
    return (slice(None),)


def _weight_param(a: Adapter, m: nn.Module, shape: ModelShape, name: str
                  ) -> tuple[nn.Parameter, Callable[[Tensor], Tensor], Callable[[tuple[int, ...]], tuple]]:
    """(parameter, its view in the catalogue's layout, the index of some heads in the parameter)."""
    H, e = shape.heads, shape.d_head
    parts = name.split(".")
    if parts[0] != "blocks":
        path = {"embed": a.embed, "pos_embed": a.pos_embed, "ln_final": a.final_norm}[parts[0]] or ""
        return get(m, join(path, "bias" if name.endswith(".b") else "weight")), _same, _whole
    L, leaf = parts[1], parts[-1]
    block = join(a.blocks, L)
    if parts[2] in ("ln1", "ln2"):
        ln = get(m, join(block, a.norms[parts[2] == "ln2"]))
        return (ln.weight if leaf == "w" else ln.bias), _same, _whole
    attn = join(block, a.attn)
    conv = a.layout == "conv1d"                       # Conv1D weight [in, out] (x @ W); Linear [out, in] (x @ W.T)

    def rows_or_cols(idx: Tensor) -> tuple:          # index the 'out' axis
        return (slice(None), idx) if conv else (idx,)
    if leaf == "W_O":
        p = get(m, join(attn, a.o, "weight"))         # [H·e, d] conv, [d, H·e] linear: index the 'in' axis
        if conv:
            return p, (lambda w: w.reshape(H, e, -1)), (lambda hs: (_span(hs, e),))
        return p, (lambda w: w.reshape(-1, H, e).permute(1, 2, 0)), (lambda hs: (slice(None), _span(hs, e)))
    k = "QKV".index(leaf[-1])
    if not a.qkv:
        p = get(m, join(attn, (a.q, a.k, a.v)[k], "weight"))
        out_first = (lambda w: w) if not conv else (lambda w: w.T)          # [H·e, d]
        return p, (lambda w: out_first(w).reshape(H, e, -1).transpose(1, 2)), (lambda hs: rows_or_cols(_span(hs, e)))
    p = get(m, join(attn, a.qkv, "weight"))
    of = (lambda w: w) if not conv else (lambda w: w.T)                     # [3·H·e, d]
    if a.fused == "per_head":                                               # rows h·3e + k·e + i
        return (p, (lambda w, k=k: of(w).reshape(H, 3, e, -1)[:, k].transpose(1, 2)),
                (lambda hs, k=k: rows_or_cols(_span(hs, e, k * e, 3 * e))))
    return (p, (lambda w, k=k: of(w).reshape(3, H, e, -1)[k].transpose(1, 2)),   # rows k·H·e + h·e + i
            (lambda hs, k=k: rows_or_cols(_span(hs, e, k * H * e))))


# ---------------------------------------------------------------------------------------
# The seam


class AdaptedSeam:
    """Any torch module with an Adapter, behind the model seam; every forward is one nnsight trace."""

    def __init__(self, module: nn.Module, adapter: Adapter, shape: ModelShape, what: str):
        from .nnsight_seam import import_nnsight
        self._module = module
        self._shape = shape
        self.adapter = adapter
        self.what = what                              # how errors name the model
        self.nn = import_nnsight().NNsight(module)
        self._infos = adapter_catalogue(adapter, shape, module)
        self._routes = routes(adapter, shape)
        self._order = {i.name: i.order for i in self._infos if i.kind == "activation"}
        self._groups: list[tuple[str, str, list[tuple[Route, HookFn]]]] = []
        self._sources: list[str] = []

    @property
    def shape(self) -> ModelShape:
        return self._shape

    @property
    def module(self) -> nn.Module:
        return self._module

    def catalogue(self) -> list[SiteInfo]:
        return self._infos

    def install(self, fns: Mapping[str, HookFn]) -> None:
        """Group the functions by the envoy value they edit, in forward order (as nnsight requires)."""
        groups: dict[tuple[str, str], list[tuple[Route, HookFn]]] = {}
        for name in sorted(fns, key=lambda n: self._order[n]):
            r = self._routes[name]
            groups.setdefault((r.path, r.io), []).append((r, fns[name]))
        self._groups = [(path, io, edits) for (path, io), edits in groups.items()]
        # modules whose `.source` operations are reached: named to nnsight first in each trace
        owners = [path.split(".source.")[0] for path, _, _ in self._groups if ".source." in path]
        self._sources = list(dict.fromkeys(owners))                # forward order, each module once

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        p, _, index = _weight_param(self.adapter, self._module, self._shape, site)
        return p, (slice(None),) if heads is None else index(heads)

    def weight(self, name: str) -> Tensor:
        p, view, _ = _weight_param(self.adapter, self._module, self._shape, name)
        return view(p)

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        raise InputError("", "", f"previous_token_input on {self.what}",
                         "a value source for any model (previous_token_input rebuilds attention from given "
                         "residuals, which only the built-in model can do)")

    def forward(self, batch: Batch) -> Tensor:
        """Logits [batch, pos, vocab]: one trace, each group's functions applied to its envoy's value."""
        with self.nn.trace(batch.tokens):
            for path in self._sources:
                get(self.nn, path).source                  # noqa: B018 - nnsight prepares the module's operations
            for path, io, edits in self._groups:
                envoy = get(self.nn, path)
                x, rewrap = carried(getattr(envoy, io))
                for r, fn in edits:
                    x = r.put(x, fn(r.view(x)))
                setattr(envoy, io, rewrap(x))
            logits = carried(self.nn.output)[0].save()  # nnsight adds .save
        return logits

    def check_order(self, batch: Batch) -> dict[str, tuple[int, ...]]:
        """Run every activation site once in catalogue order; a module computing them in another order
        is told which site came too late (nnsight can only meet sites in the order they run). Returns
        each site's shape in that forward."""
        names = list(self._order)
        seen: dict[str, tuple[int, ...]] = {}

        def keep(name: str) -> HookFn:
            def fn(x: Tensor) -> Tensor:
                seen[name] = tuple(x.shape)
                return x
            return fn
        self.install({n: keep(n) for n in names})
        try:
            self.forward(batch)
        except Exception as e:                      # nnsight's OutOfOrderError, or a route that does not exist
            late = re.search(r"'model\.(.+?)(?:\.i\d+)?' was requested but the model already ran past it", str(e))
            what = f"{late.group(1)} reached after the model ran past it" if late else f"{type(e).__name__}: {e}"
            raise InputError("", "", f"{self.what}: {what[:120]}", "an adapter whose parts run in the order "
                             + " → ".join(_ORDER), "check the adapter's paths against print(model)") from None
        finally:
            self.install({})
        return seen


_ORDER = ("resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "attn_out", "mlp_out", "resid_post")
