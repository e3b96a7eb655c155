"""The nnsight backend of the model seam: interventions applied through nnsight's tracing.

Model layer, beside seam.py. `NNsightSeam` wraps the built-in transformer's seam
(foreign models are adapter.py's) and reaches its sites through nnsight (nnsight.NNsight over
the torch module) instead of the family's own hook points: every forward pass is one
`trace`, in which the function installed at each site replaces that module's output
(`envoy.output = fn(envoy.output)`), sites taken in forward order as nnsight requires.
Parameters, freezes, measures and everything else are the wrapped seam's.

A recipe asks for it with `model: {backend: nnsight}`. On the built-in model it gives the same
losses, gradients and parameters bit for bit as the native hook points
(tests/test_nnsight_backend.py): the same operations run in the same order, nnsight only
carries them. nnsight is optional (`pip install 'clamp[nnsight]'`, part of the test extra).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..names.errors import InputError
from ..names.sites import ModelShape, SiteInfo
from ..tasks import Batch
from .modsites import get

HookFn = Any


def import_nnsight():
    try:
        import nnsight
    except ImportError:
        raise InputError("model.backend", "", "nnsight, which is not installed", "the native backend, or nnsight",
                         "pip install 'clamp[nnsight]'") from None
    return nnsight


class NNsightSeam:
    """A seam whose site functions run inside an nnsight trace of the wrapped seam's module."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.nn = import_nnsight().NNsight(inner.module)
        self._order = {i.name: i.order for i in inner.catalogue() if i.kind == "activation"}
        self._sites: list[tuple[Any, HookFn]] = []

    @property
    def shape(self) -> ModelShape:
        return self.inner.shape

    @property
    def module(self) -> nn.Module:
        return self.inner.module

    def catalogue(self) -> list[SiteInfo]:
        return self.inner.catalogue()

    def install(self, fns: Mapping[str, HookFn]) -> None:
        """Sites in forward order (as nnsight requires), their modules made to run by the family."""
        self._sites = [(self._envoy(name), fns[name]) for name in sorted(fns, key=lambda n: self._order[n])]
        self.inner.run_sites(list(fns))

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        return self.inner.parameter_slice(site, heads)

    def weight(self, name: str) -> Tensor:
        return self.inner.weight(name)

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        return self.inner.attention_scores(layer, xq, xk)

    def _envoy(self, site: str):
        return get(self.nn, site)              # the built-in model's hook points sit at their site names

    def forward(self, batch: Batch) -> Tensor:
        """Logits [batch, pos, n_out]: one trace, each installed function at its site's output."""
        with self.nn.trace(batch.tokens, batch.vectors, batch.is_vector):
            for envoy, fn in self._sites:
                envoy.output = fn(envoy.output)
            logits = self.nn.output.save()
        return logits
