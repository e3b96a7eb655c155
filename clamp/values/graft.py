"""Grafts: another run's activation at the same site on the same batch.

Model layer (values/): a built-in value source, registered on import; the donor run is loaded by
the run layer (training/donor.py) and reached through Context.donor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..names.errors import InputError
from ..names.schema import opt
from .base import ValueSource, register_value


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
        return _donor_activation(ctx, self.options, site.name).to(x.device, x.dtype), None


@torch.compiler.disable
def _donor_activation(ctx, options: GraftOptions, site: str):
    """The donor's activation, computed outside any compiled graph (train.compile): the donor is
    another model run with its own hooks, which a graph of this model cannot hold."""
    donor = ctx.donor(options.run.replace("{seed}", str(ctx.seed)), options.step)
    return donor.activation(ctx.batch, site)
