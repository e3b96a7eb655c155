"""The nnsight backend against the native hook points on the built-in model: the same recipe
trains to the same losses, step by step, and the same parameters, bit for bit — for a clamp, an
ablation, a freeze and a preserve (and the measures read from recorded patterns)."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny

from clamp.training.train import Trainer

pytest.importorskip("nnsight")

CASES = {
    "clamp": """
interventions:
  - clamp: blocks.0.attn.hook_pattern[2]
    to: previous_token
    steps: [0, 6]
  - clamp: blocks.1.attn.hook_pattern[1]
    to: induction
""",
    "ablate": """
interventions:
  - ablate: blocks.1.attn.hook_z[1,3]
  - ablate: blocks.0.attn.hook_z[0]
    how: mean
    steps: [3, 9]
""",
    "freeze": """
interventions:
  - freeze: blocks.0.attn.W_Q[2]
    steps: [2, 7]
  - freeze: blocks.1.ln1.w
""",
    "preserve": """
interventions:
  - ablate: blocks.0.attn.hook_z[1,2]
    preserve: [patterns]
  - ablate: blocks.1.ln1.hook_normalized
    steps: [0, 4]
""",
}


def losses_and_params(extra: str, backend: str, steps: int = 10):
    r = tiny(extra, model={"layers": 2, "heads": 4, "d_model": 16, "backend": backend})
    tr = Trainer(r, 0)
    assert type(tr.seam.inner).__name__ == ("NNsightSeam" if backend == "nnsight" else "BuiltinSeam")
    losses = [tr.train_step() for _ in range(steps)]
    row = tr.evaluate()
    return losses, {n: p.detach().clone() for n, p in tr.model.named_parameters()}, row


@pytest.mark.parametrize("case", sorted(CASES))
def test_nnsight_backend_is_bit_for_bit_the_native_one(case):
    extra = CASES[case]
    native, p_native, row_native = losses_and_params(extra, "native")
    traced, p_traced, row_traced = losses_and_params(extra, "nnsight")
    assert traced == native                                            # every step's loss, exactly
    assert all(torch.equal(p_native[n], p_traced[n]) for n in p_native)
    assert row_traced == row_native                                    # measures read through nnsight too
    plain, _, _ = losses_and_params("", "nnsight")
    assert plain != traced                                             # the interventions did act


def test_a_recipe_without_interventions_trains_through_nnsight():
    losses, _, row = losses_and_params("", "nnsight", steps=3)
    assert len(losses) == 3 and "loss" in row
