"""clamp's interventions against the same interventions written in nnsight (an independent
intervention library) on a copy of the same built-in model: logits and the gradients into
every parameter agree bit for bit."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny

from clamp.models.builtin import build_model
from clamp.training.train import Trainer

nnsight = pytest.importorskip("nnsight")

ZERO_AND_PATTERN = """
interventions:
  - ablate: blocks.1.attn.hook_z[1,3]
  - clamp: blocks.0.attn.hook_pattern[2]
    to: previous_token
"""
WITH_MEAN = ZERO_AND_PATTERN + """\
  - ablate: blocks.0.attn.hook_z[1]
    how: mean
"""


def previous_token_pattern(T: int) -> torch.Tensor:
    """[T, T]: row i attends i-1 (row 0 attends itself), written independently of clamp."""
    p = torch.zeros(T, T)
    p[0, 0] = 1.0
    p[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return p


def by_nnsight(model, batch, mean: bool):
    """The recipe's interventions written by hand in nnsight; returns the logits."""
    nm = nnsight.NNsight(model)
    T = batch.tokens.shape[1]
    head = lambda n, hs: torch.isin(torch.arange(n), torch.tensor(hs))  # noqa: E731  [n] bool
    with nm.trace(batch.tokens, batch.vectors, batch.is_vector):
        # written out of place, so autograd can still differentiate through what was replaced
        A = nm.blocks[0].attn.hook_pattern.output                          # [batch, head, q, k]
        nm.blocks[0].attn.hook_pattern.output = torch.where(
            head(A.shape[1], [2])[None, :, None, None], previous_token_pattern(T), A)
        if mean:
            z0 = nm.blocks[0].attn.hook_z.output                           # [batch, pos, head, d_head]
            nm.blocks[0].attn.hook_z.output = torch.where(
                head(z0.shape[2], [1])[None, None, :, None], z0.detach().mean(dim=0, keepdim=True), z0)
        z1 = nm.blocks[1].attn.hook_z.output
        nm.blocks[1].attn.hook_z.output = torch.where(head(z1.shape[2], [1, 3])[None, None, :, None], 0.0, z1)
        logits = nm.output.save()
    return logits


@pytest.mark.parametrize("mean", [False, True], ids=["zero+pattern", "with-mean"])
def test_clamp_equals_the_same_interventions_in_nnsight(mean):
    r = tiny(WITH_MEAN if mean else ZERO_AND_PATTERN)
    exact = dict(rtol=0, atol=0)
    tr = Trainer(r, 0)
    batch = tr.task.train_batch(3, 8)
    tr.intervener.set_step(0)
    ours = tr.intervener.forward(batch)
    ours.sum().backward()
    ours_grad = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}

    plain = build_model(r.shape(), 1)                    # no clamp hooks attached to this one
    plain.load_state_dict(tr.model.state_dict())
    with torch.no_grad():
        untouched = plain(batch.tokens, batch.vectors, batch.is_vector)
    assert (untouched - ours).abs().max() > 1e-2      # the interventions do change the output

    theirs = by_nnsight(plain, batch, mean)
    torch.testing.assert_close(theirs.detach(), ours.detach(), **exact)
    theirs.sum().backward()
    for n, p in plain.named_parameters():
        if n in ours_grad:
            torch.testing.assert_close(p.grad, ours_grad[n], **exact, msg=n)
        else:
            assert p.grad is None or not p.grad.any(), n
