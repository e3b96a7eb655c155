"""clamp's optimizers and what a freeze does to optimizer state, against independent references:
torch's own fused Adam/AdamW, a fresh torch Adam started at the release step, and a
hand-written Adam for `optimizer_state: accumulate`."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny
from hypothesis import given, settings
from hypothesis import strategies as st

from clamp.training.optim import Adam
from clamp.training.train import Trainer


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-4, 1e-1), b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999),
       wd=st.sampled_from([0.0, 1e-3, 0.1]), decoupled=st.booleans(), steps=st.integers(1, 30),
       seed=st.integers(0, 2**16))
def test_adam_is_torchs_fused_adam_bit_for_bit(lr, b1, b2, wd, decoupled, steps, seed):
    g = torch.Generator().manual_seed(seed)
    p1 = torch.nn.Parameter(torch.randn(4, 6, generator=g))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ref = (torch.optim.AdamW if decoupled else torch.optim.Adam)([p1], lr=lr, betas=(b1, b2), weight_decay=wd,
                                                                  fused=True)
    ours = Adam([p2], lr=lr, betas=(b1, b2), weight_decay=wd, decoupled=decoupled)
    for _ in range(steps):
        grad = torch.randn(4, 6, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        ref.step()
        ours.step()
        assert torch.equal(p1, p2)


def _trajectory(recipe_text: str, optimizer: str = "adam", wd: float = 0.0, steps: int = 40):
    """Train; after every step record W_O of layer 1 and the gradient that step used."""
    r = tiny(recipe_text, train={"steps": steps, "batch": 8, "lr": 1e-2, "optimizer": optimizer,
                                 "weight_decay": wd, "eval_every": 5, "eval_size": 16})
    tr = Trainer(r, 0)
    W = tr.model.blocks[1].attn.W_O
    values, grads = [W.detach().clone()], []
    for _ in range(steps):
        tr.train_step()
        grads.append(W.grad.detach().clone())
        values.append(W.detach().clone())
    return r, values, grads


def _fresh_torch_adam(start: torch.Tensor, grads: list[torch.Tensor], r, optimizer: str, wd: float):
    """torch's Adam/AdamW on a standalone tensor, fed `grads` one step at a time → values after each."""
    p = torch.nn.Parameter(start.clone())
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = cls([p], lr=r.train.lr, betas=r.train.betas, weight_decay=wd, fused=True)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


@pytest.mark.parametrize("optimizer, wd", [("adam", 0.0), ("adam", 0.05), ("adamw", 0.05)])
def test_hold_from_step_0_then_release_is_a_fresh_adam_started_at_release(optimizer, wd):
    T, N, h = 15, 40, 2
    r, values, grads = _trajectory(f"""
interventions:
  - freeze: blocks.1.attn.W_O[{h}]
    steps: [0, {T}]
""", optimizer, wd, N)
    for s in range(T + 1):                                    # held bit for bit through the window
        assert torch.equal(values[s][h], values[0][h])
    ref = _fresh_torch_adam(values[T][h], [g[h] for g in grads[T:]], r, optimizer, wd)
    for k, want in enumerate(ref):
        assert torch.equal(values[T + 1 + k][h], want), k
    # the first update after release is a fresh start's: |Δ| <= lr on every element (not 1.8 x lr)
    first = (values[T + 1][h] - values[T][h]).abs().max().item()
    assert first <= r.train.lr * (1 + 1e-4) + (r.train.lr * wd * values[T][h].abs().max().item())
    # the other heads never froze: they follow the same optimizer from step 0
    ref_all = _fresh_torch_adam(values[0][0], [g[0] for g in grads], r, optimizer, wd)
    for k, want in enumerate(ref_all):
        assert torch.equal(values[k + 1][0], want), k


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_hold_in_the_middle_is_a_paused_adam(optimizer):
    a, b, N, h = 10, 22, 40, 1
    wd = 0.05 if optimizer == "adamw" else 0.0
    r, values, grads = _trajectory(f"""
interventions:
  - freeze: blocks.1.attn.W_O[{h}]
    steps: [{a}, {b}]
""", optimizer, wd, N)
    outside = [g[h] for s, g in enumerate(grads) if not a <= s < b]      # the steps the slice learnt at
    ref = _fresh_torch_adam(values[0][h], outside, r, optimizer, wd)
    want = ref[:a] + [ref[a - 1]] * (b - a) + ref[a:]                  # paused through the window
    for s, w in enumerate(want):
        assert torch.equal(values[s + 1][h], w), s


def test_accumulate_keeps_moments_moving_and_releases_with_them():
    a, b, N, h = 5, 20, 35, 3
    r, values, grads = _trajectory(f"""
interventions:
  - freeze: blocks.1.attn.W_O[{h}]
    steps: [{a}, {b}]
    optimizer_state: accumulate
""", "adam", 0.0, N)
    lr, (b1, b2), eps = r.train.lr, r.train.betas, 1e-8
    p = values[0][h].double()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for s in range(N):                                        # by hand, in float64
        g = grads[s][h].double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        t = s + 1
        if not a <= s < b:
            p = p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        torch.testing.assert_close(values[s + 1][h].double(), p, rtol=1e-4, atol=1e-6)
    for s in range(a, b + 1):
        assert torch.equal(values[s][h], values[a][h])
    # released with a step count of b (not a fresh start): the first update is not the fresh one
    fresh = _fresh_torch_adam(values[b][h], [grads[b][h]], r, "adam", 0.0)[0]
    assert not torch.allclose(values[b + 1][h], fresh, rtol=1e-3, atol=1e-6)


def test_freezes_of_one_slice_with_different_optimizer_state_are_refused():
    from clamp.names.errors import InputError
    from clamp.recipe.compile import compile_plan
    r = tiny("""
interventions:
  - freeze: blocks.1.attn.W_O[0:2]
    steps: [0, 10]
  - freeze: blocks.1.attn.W_O[1]
    steps: [5, 15]
    optimizer_state: accumulate
""")
    with pytest.raises(InputError, match=r"interventions\[1\]: found a freeze of blocks.1.attn.W_O\[1\] with optimizer_state accumulate"):  # noqa: E501
        compile_plan(r)


def test_resume_keeps_per_element_step_counts(tmp_path):
    """A checkpoint taken inside a held window restores the split step count exactly."""
    from clamp.training.train import train_seed
    r = tiny("""
interventions:
  - freeze: blocks.1.attn.W_O[2]
    steps: [0, 12]
""", train={"steps": 20, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 16, "checkpoint_every": 8})
    full = train_seed(r, 0, tmp_path / "a")
    import shutil
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "summary.json").unlink()
    (tmp_path / "b" / "checkpoints" / "step_0000020.pt").unlink()
    again = train_seed(r, 0, tmp_path / "b")
    assert again["resumed_from"] == 16 and again["final"] == full["final"]
    sa = torch.load(tmp_path / "a" / "checkpoints" / "step_0000020.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "checkpoints" / "step_0000020.pt", weights_only=True)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert math.isfinite(full["final"]["loss"])
