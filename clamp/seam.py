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

A model family registers a builder with `@register_model("name")`; `ModelShape.family`
picks it, and sites.py's catalogue registry (`register_catalogue`) names its sites, so a
recipe, its plan and the training loop work unchanged on any family. The built-in
transformer (model.py) is the family "builtin".
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol

from torch import Tensor, nn

from . import hf
from . import model as builtin
from .errors import InputError, did_you_mean, show
from .sites import ModelShape, SiteInfo, catalogue
from .tasks import Batch

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
MODELS: dict[str, Builder] = {"builtin": builtin.build, **{name: hf.build for name in hf.FAMILIES}}


def register_model(family: str) -> Callable[[Builder], Builder]:
    """Register `builder(shape, seed) -> ModelSeam` for `ModelShape.family == family`."""
    def deco(builder: Builder) -> Builder:
        MODELS[family] = builder
        return builder
    return deco


def build(shape: ModelShape, seed: int) -> ModelSeam:
    """A freshly initialised model of this shape (init drawn from `seed`), behind the seam."""
    if shape.family not in MODELS:
        raise InputError("", "model.family", show(shape.family), "a model family: " + ", ".join(sorted(MODELS)),
                         did_you_mean(shape.family, MODELS))
    seam = MODELS[shape.family](shape, seed)
    if shape.backend == "nnsight" and not hasattr(seam, "nn"):      # a family already on nnsight stays as it is
        from .nnsight_seam import NNsightSeam          # optional dependency, imported only when asked for
        seam = NNsightSeam(seam)
    names = {i.name for i in seam.catalogue()}
    expected = {i.name for i in catalogue(shape)}
    assert names == expected, f"model and site catalogue disagree: {sorted(names ^ expected)}"
    return seam

