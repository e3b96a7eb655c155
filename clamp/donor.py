"""A trained run's checkpoint, loaded to supply activations (the `graft` value source).

Sits beside hooks/train: it rebuilds another run's model from its recipe.yaml and a
checkpoint (weights only, no code), with that run's own interventions as they were at the
checkpoint's step, and evaluates it on a batch to read one site.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError


class Donor:
    def __init__(self, recipe, model, intervener, step: int):
        self.recipe, self.model, self.intervener, self.step = recipe, model, intervener, step

    @torch.no_grad()
    def activation(self, batch, site: str) -> torch.Tensor:
        iv = self.intervener
        iv.set_step(min(self.step, self.recipe.train.steps - 1))
        with iv.recording([site]) as rec:
            iv.forward(batch)
        return rec[site]


def load_donor(run_dir: str, step: int = -1) -> Donor:
    from .compile import compile_plan
    from .hooks import Intervener
    from .model import build_model
    from .spec import load_recipe
    from .store import list_checkpoints, load_checkpoint
    d = Path(run_dir)
    if not (d / "recipe.yaml").exists():
        raise InputError(str(d), "", "no recipe.yaml", "a run directory written by `clamp run` (for graft)")
    recipe = load_recipe(d / "recipe.yaml")
    ckpts = dict(list_checkpoints(d))
    if not ckpts:
        raise InputError(str(d), "", "a run without checkpoints", "a finished run to graft from")
    s = max(ckpts) if step < 0 else step
    if s not in ckpts:
        raise InputError(str(d), "step", str(step), "a checkpoint step: " + ", ".join(map(str, sorted(ckpts))))
    model = build_model(recipe.shape(), recipe.seeds[0])
    model.load_state_dict(load_checkpoint(ckpts[s])["model"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Donor(recipe, model, Intervener(model, compile_plan(recipe)), s)
