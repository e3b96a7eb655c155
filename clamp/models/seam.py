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
from . import builtin, hf, usermodel
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


def site_sizes(shape: ModelShape) -> dict[str, tuple[int | None, ...] | None]:
    """Each site's sizes for a model of `shape` (None for the batch; None where unknown): from the layout
    for the built-in model, from the module itself (on the meta device, no memory) for the others."""
    from ..names.sites import layout_sizes
    out: dict[str, tuple[int | None, ...] | None] = {i.name: layout_sizes(i, shape) for i in catalogue(shape)}
    if shape.family == "builtin":
        return out
    fam = hf.FAMILIES.get(shape.family)
    adapter = fam.adapter if fam is not None else usermodel.skeleton(shape)[1]
    meta = AdaptedSeam(_skeleton(shape), adapter, shape, shape.family)
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
