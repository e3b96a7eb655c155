"""Donors: other runs' trained models, read at a site to supply the `graft` value source.

Run layer. `Donors` is the loader the Intervener hands to value sources (`Context.donor`): it
loads a run directory's model at a checkpoint (store/rundir.py's load_model: weights only, no code), with
that run's own interventions as they were at the checkpoint's step, once per (run, step), and
evaluates it on a batch to read one site.
"""
from __future__ import annotations

import torch

from ..recipe.compile import compile_plan
from ..store.rundir import load_model, run_metrics
from ..tasks import TASKS
from .hooks import Intervener


class Donor:
    def __init__(self, loaded, intervener: Intervener):
        self.recipe, self.seam, self.step = loaded.recipe, loaded.seam, loaded.step
        self.intervener = intervener

    @torch.no_grad()
    def activation(self, batch, site: str) -> torch.Tensor:
        iv = self.intervener
        iv.set_step(min(self.step, self.recipe.train.steps - 1))
        device = next(self.seam.module.parameters()).device     # the donor's (checkpoints load on the CPU)
        with iv.recording([site]) as rec:
            iv.forward(batch.to(device))
        return rec[site]


class Donors:
    """`donors(run_dir, step)` → that run's Donor, loaded once."""

    def __init__(self):
        self._loaded: dict[tuple[str, int], Donor] = {}

    def __call__(self, run_dir: str, step: int = -1) -> Donor:
        key = (run_dir, step)
        if key not in self._loaded:
            loaded = load_model(run_dir, step)
            plan = compile_plan(loaded.recipe, metrics_of=run_metrics)
            r = loaded.recipe
            task = TASKS[r.task.name](r.task.options, r.seeds[0])
            self._loaded[key] = Donor(loaded, Intervener(loaded.seam, plan, seed=r.seeds[0], donor=self, task=task))
        return self._loaded[key]

