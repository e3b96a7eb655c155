"""The model seam: the one interface through which clamp reaches a model.

Model layer (under recipes, store and the training loop). Everything above it (the
Intervener in hooks.py, the training loop, value sources, progress measures, donors,
composition) sees a model only as a `ModelSeam`:

    shape                  the ModelShape it was built from (layers, heads, widths, family)
    module                 the torch module: parameters, state_dict, train()/eval()
    catalogue()            its sites (sites.SiteInfo: name, kind, layer, head axis, layout)
    install(fns)           put a function at each named activation site, remove every other
    parameter_slice(s, h)  (parameter, index) of a site's heads, for freezes: p[index] is the slice
    weight(name)           a parameter in the catalogue's layout (per-head weights head-first)
    forward(batch)         logits [batch, pos, n_out] of a task's Batch
    attention_scores(L, xq, xk)
                           layer L's masked pre-softmax scores [batch, head, query, key] from given
                           query-side and key-side residuals [batch, pos, d_model] (its LayerNorm
                           applied, no hook runs) — the 'perfect previous-token input' clamp uses it

`FAMILIES` below is the one table of model families: for each, how to build it, its
TransformerLens sites (for a skeleton of the model), how it completes a shape from a recipe's
keys, and a skeleton on the meta device (module structure, no memory) for raw `module:` sites
(modsites.py). `register_model` adds one, and registers its sites with sites.py, so a recipe,
its plan and the training loop work unchanged on any family. The built-in transformer
(model.py) is "builtin"; hf.py's transformers families "gpt2", "gpt_neox", "llama"; a user's
own module (usermodel.py) "module". Every seam `build` returns also has the raw module sites.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..names.errors import InputError, did_you_mean, show
from ..names.sites import ModelShape, SiteInfo, builtin_catalogue, catalogue, register_family
from ..tasks import Batch
from . import builtin, folded, hf, stacked, usermodel
from .adapter import AdaptedSeam, adapter_catalogue
from .modsites import ModuleSites, module_sites

HookFn = Callable[[Tensor], Tensor]


class ModelSeam(Protocol):
    @property
    def shape(self) -> ModelShape: ...

    @property
    def module(self) -> nn.Module: ...

    def catalogue(self) -> list[SiteInfo]: ...

    def install(self, fns: Mapping[str, HookFn]) -> None: ...

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]: ...

    def weight(self, name: str) -> Tensor: ...

    def forward(self, batch: Batch) -> Tensor: ...

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor: ...


Builder = Callable[[ModelShape, int], ModelSeam]


@dataclass(frozen=True)
class Family:
    build: Builder                                         # (shape, seed) -> a seam
    sites: Callable[[ModelShape, nn.Module], list[SiteInfo]]   # TransformerLens sites, given a skeleton
    skeleton: Callable[[ModelShape], nn.Module]            # the module on the meta device
    derive: Callable[[ModelShape], ModelShape] | None = None   # the family's facts filled into a shape


FAMILIES: dict[str, Family] = {}


def register_model(name: str, family: Family) -> None:
    """Add a model family: seam.build builds it, sites.catalogue names its sites (TransformerLens and raw)."""
    FAMILIES[name] = family

    def sites(shape: ModelShape) -> list[SiteInfo]:
        skeleton = _skeleton(shape)
        return family.sites(shape, skeleton) + module_sites(skeleton)
    register_family(name, sites, family.derive)


@functools.lru_cache(maxsize=32)
def _skeleton(shape: ModelShape) -> nn.Module:
    return FAMILIES[shape.family].skeleton(shape)


def skeleton(shape: ModelShape) -> nn.Module:
    """The model of this shape on the meta device: its structure and parameter shapes, no memory."""
    return _skeleton(shape)


def _builtin_skeleton(shape: ModelShape) -> nn.Module:
    with torch.device("meta"):
        return builtin.Transformer(shape)


def _hf_sites(shape: ModelShape, skeleton: nn.Module) -> list[SiteInfo]:
    return adapter_catalogue(hf.FAMILIES[shape.family].adapter, shape, skeleton)


def _user_sites(shape: ModelShape, skeleton: nn.Module) -> list[SiteInfo]:
    _, adapter, seen = usermodel.skeleton(shape)
    return adapter_catalogue(adapter, shape, skeleton, seen)


register_model("builtin", Family(builtin.build, lambda shape, _: builtin_catalogue(shape), _builtin_skeleton))
for _name in hf.FAMILIES:
    register_model(_name, Family(hf.build, _hf_sites, functools.partial(hf.module, device="meta"), hf.shape_of))
register_model("module", Family(usermodel.build, _user_sites, lambda shape: usermodel.skeleton(shape)[0],
                                usermodel.shape_of))


def adapted(shape: ModelShape, module: nn.Module | None = None) -> AdaptedSeam:
    """A family other than the built-in one behind its adapter: `module` (default its meta skeleton)."""
    fam = hf.FAMILIES.get(shape.family)
    adapter = fam.adapter if fam is not None else usermodel.skeleton(shape)[1]
    return AdaptedSeam(_skeleton(shape) if module is None else module, adapter, shape, shape.family)


def site_sizes(shape: ModelShape) -> dict[str, tuple[int | None, ...] | None]:
    """Each site's sizes for a model of `shape` (None for the batch; None where unknown): from the layout
    for the built-in model, from the module itself (on the meta device, no memory) for the others."""
    from ..names.sites import layout_sizes
    out: dict[str, tuple[int | None, ...] | None] = {i.name: layout_sizes(i, shape) for i in catalogue(shape)}
    if shape.family == "builtin":
        return out
    meta = adapted(shape)
    for i in catalogue(shape):
        if i.kind == "parameter" and not i.name.startswith("module:"):
            try:
                out[i.name] = tuple(meta.weight(i.name).shape)
            except Exception:  # noqa: BLE001 - a view the meta module cannot give: leave it unknown
                out[i.name] = None
    return out


def build(shape: ModelShape, seed: int) -> ModelSeam:
    """A freshly initialised model of this shape (init drawn from `seed`), behind the seam."""
    if shape.family not in FAMILIES:
        raise InputError("", "model.family", show(shape.family), "a model family: " + ", ".join(sorted(FAMILIES)),
                         did_you_mean(shape.family, FAMILIES))
    seam: Any = FAMILIES[shape.family].build(shape, seed)
    if shape.family == "builtin" and shape.backend == "nnsight":   # the other families are on nnsight already
        from .nnsight_seam import NNsightSeam  # optional dependency, imported only when asked for
        seam = NNsightSeam(seam)
    seam = ModuleSites(seam)
    names = {i.name for i in seam.catalogue()}
    expected = {i.name for i in catalogue(shape)}
    assert names == expected, f"model and site catalogue disagree: {sorted(names ^ expected)}"
    return seam


# ---------------------------------------------------------------------------------------
# Many models of one shape as one module (ensembles)


@functools.lru_cache(maxsize=32)
def _fold_kinds(shape: ModelShape) -> dict[str, str] | str:
    try:
        return folded.fold_kinds(adapted(shape), shape.n_ctx)
    except Exception as e:  # noqa: BLE001 - any failure of the trial is the reason
        return f"its members cannot be folded into one batch ({type(e).__name__}: {str(e)[:160]})"


def stack_problem(shape: ModelShape) -> str:
    """Why K models of this shape cannot train as one stacked module ('' when they can). The
    built-in transformer on its native backend stacks (stacked.py); a family behind an adapter
    folds its members into the batch (folded.py) when its skeleton does: checked by one forward
    of two folded skeletons on the meta device (no memory)."""
    if shape.family == "builtin":
        native = shape.backend == "native"
        return "" if native else "model.backend nnsight: every forward is an nnsight trace of one model"
    if shape.family not in FAMILIES:
        return f"model.family {shape.family} is not known"
    kinds = _fold_kinds(shape)
    return kinds if isinstance(kinds, str) else ""


def stack(shape: ModelShape, seeds: list[int],
          device: torch.device | str = "cpu") -> stacked.Stack | folded.FoldedStack:
    """K freshly initialised models of this shape (member k's init drawn from seeds[k]) as one
    module with a member axis; `stack_problem(shape)` must be ''."""
    if shape.family == "builtin":
        return stacked.Stack([builtin.build_model(shape, s).to(device) for s in seeds])
    kinds = _fold_kinds(shape)
    assert not isinstance(kinds, str), kinds
    seams = []
    for s in seeds:
        seam = FAMILIES[shape.family].build(shape, s)
        assert isinstance(seam, AdaptedSeam), f"family {shape.family} is not behind an adapter"
        seam.module.to(device)
        seams.append(seam)
    return folded.FoldedStack(seams, kinds)
