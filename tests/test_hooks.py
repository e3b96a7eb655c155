"""Interventions against independent references: plain loop, hand-made hooks, brute-force windows."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny
from hypothesis import given, settings
from hypothesis import strategies as st

from clamp.models.builtin import build_model
from clamp.recipe.compile import compile_plan
from clamp.training.train import Trainer, loss_fn


def plain_losses(recipe, n):
    """An independent loop: the model called directly, no Intervener, no hook functions."""
    tr = Trainer(recipe, 0)                      # only for the task and config
    model = build_model(recipe.shape(), 0)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.train.lr, betas=recipe.train.betas, fused=True)
    out = []
    for step in range(n):
        b = tr.task.train_batch(step, recipe.train.batch)
        logits = model(b.tokens, b.vectors, b.is_vector)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def test_no_interventions_is_exactly_the_plain_model():
    r = tiny()
    tr = Trainer(r, 0)
    got = [tr.train_step() for _ in range(15)]
    assert got == plain_losses(r, 15)
    assert all(hp.fn is None for hp in tr.model.hook_points.values())


def record(model, batch, site):
    """Reference activation: a deep copy of the model with a hand-made recording hook."""
    m = copy.deepcopy(model)
    for hp in m.hook_points.values():
        hp.fn = None
    seen = {}
    m.hook_points[site].fn = lambda x: seen.setdefault("x", x) if False else seen.update(x=x) or x
    with torch.no_grad():
        m(batch.tokens, batch.vectors, batch.is_vector)
    return seen["x"]


def test_clamp_sets_the_activation_inside_its_window_only():
    r = tiny("""
interventions:
  - clamp: blocks.0.attn.hook_pattern[1]
    to: previous_token
    strength: 0.75
    steps: [3, 6]
""")
    tr = Trainer(r, 0)
    batch = tr.task.train_batch(999, 8)
    site = "blocks.0.attn.hook_pattern"
    T = batch.tokens.shape[1]
    ideal = 0.25 * torch.eye(T)
    ideal[torch.arange(1, T), torch.arange(T - 1)] = 0.75
    ideal[0, 0] = 1.0
    for step in range(9):
        tr.intervener.set_step(step)
        with torch.no_grad(), tr.intervener.recording([site]) as rec:
            tr.intervener.forward(batch)
        ref = record(tr.model, batch, site)
        got = rec[site]
        if 3 <= step < 6:
            assert torch.equal(got[:, 1], ideal.expand_as(got[:, 1]))
            assert torch.equal(got[:, [0, 2, 3]], ref[:, [0, 2, 3]])
            assert not torch.allclose(ref[:, 1], got[:, 1])
        else:
            assert torch.equal(got, ref)
        tr.train_step()


def test_label_rows_only_leaves_other_rows():
    r = tiny("""
interventions:
  - clamp: blocks.0.attn.hook_pattern[0]
    to: previous_token
    rows: label
""")
    tr = Trainer(r, 0)
    batch = tr.task.train_batch(5, 8)
    tr.intervener.set_step(0)
    site = "blocks.0.attn.hook_pattern"
    with torch.no_grad(), tr.intervener.recording([site]) as rec:
        tr.intervener.forward(batch)
    ref = record(tr.model, batch, site)
    A = rec[site][:, 0]                                       # [batch, query, key]
    labels = batch.roles["label"][0]
    for i in range(A.shape[1]):
        if labels[i]:
            want = torch.zeros(A.shape[-1])
            want[i - 1] = 1.0
            assert torch.equal(A[:, i], want.expand_as(A[:, i]))
        else:
            assert torch.equal(A[:, i], ref[:, 0, i])


def test_ablation_zeroes_exactly_the_selected_heads():
    r = tiny("""
interventions:
  - ablate: blocks.1.attn.hook_z[1,3]
""")
    tr = Trainer(r, 0)
    batch = tr.task.train_batch(3, 8)
    tr.intervener.set_step(0)
    with torch.no_grad(), tr.intervener.recording(["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]) as rec:
        tr.intervener.forward(batch)
    z = rec["blocks.1.attn.hook_z"]                           # [batch, pos, head, d_head]
    ref = record(tr.model, batch, "blocks.1.attn.hook_z")
    assert torch.equal(z[:, :, [1, 3]], torch.zeros_like(z[:, :, [1, 3]]))
    assert torch.equal(z[:, :, [0, 2]], ref[:, :, [0, 2]])
    assert ref[:, :, [1, 3]].abs().sum() > 0
    W_O = tr.model.blocks[1].attn.W_O
    want = sum(ref[:, :, h] @ W_O[h] for h in (0, 2))
    torch.testing.assert_close(rec["blocks.1.hook_attn_out"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["mean", "resample"])
def test_mean_and_resample_ablations(how):
    r = tiny(f"""
interventions:
  - ablate: blocks.0.attn.hook_z[2]
    how: {how}
""")
    tr = Trainer(r, 0)
    batch = tr.task.train_batch(3, 8)
    tr.intervener.set_step(0)
    with torch.no_grad(), tr.intervener.recording(["blocks.0.attn.hook_z"]) as rec:
        tr.intervener.forward(batch)
    ref = record(tr.model, batch, "blocks.0.attn.hook_z")
    want = ref[:, :, 2].mean(0, keepdim=True).expand_as(ref[:, :, 2]) if how == "mean" else ref[:, :, 2].roll(1, 0)
    torch.testing.assert_close(rec["blocks.0.attn.hook_z"][:, :, 2], want, rtol=0, atol=1e-7)
    assert torch.equal(rec["blocks.0.attn.hook_z"][:, :, [0, 1, 3]], ref[:, :, [0, 1, 3]])


@pytest.mark.parametrize("optimizer, wd", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.1), ("sgd", 0.0)])
def test_freeze_holds_bit_for_bit_then_learns_again(optimizer, wd):
    r = tiny("""
interventions:
  - freeze: blocks.0.attn.W_Q[2]
    steps: [5, 15]
  - freeze: embed.W_E
    steps: [0, 10]
""")
    from dataclasses import replace
    r = replace(r, train=replace(r.train, optimizer=optimizer, weight_decay=wd, steps=25))
    tr = Trainer(r, 0)
    WQ = lambda: tr.model.blocks[0].attn.W_Q.detach().clone()  # noqa: E731
    WE = lambda: tr.model.embed.W_E.detach().clone()  # noqa: E731
    snaps, embeds, moments = [WQ()], [WE()], []
    for _ in range(25):
        tr.train_step()
        snaps.append(WQ())
        embeds.append(WE())
        st = tr.optimizer.state[tr.model.blocks[0].attn.W_Q]
        moments.append({k: v.clone() for k, v in st.items() if torch.is_tensor(v) and v.dim() == 3})
    # after s updates: frozen through updates 5..14, i.e. snaps[5] == ... == snaps[15]
    for s in range(6, 16):
        assert torch.equal(snaps[s][2], snaps[5][2]), s
        assert not torch.equal(snaps[s][[0, 1, 3]], snaps[s - 1][[0, 1, 3]]), s
        for k in ("exp_avg", "exp_avg_sq") if optimizer != "sgd" else ():
            assert torch.equal(moments[s - 1][k][2], moments[4][k][2]), (s, k)
        if optimizer != "sgd":                              # its own step count is held too
            assert torch.equal(moments[s - 1]["step"][2], torch.full_like(moments[s - 1]["step"][2], 5.0)), s
    assert not torch.equal(snaps[16][2], snaps[15][2])
    assert not torch.equal(snaps[5][2], snaps[4][2])
    for s in range(1, 11):
        assert torch.equal(embeds[s], embeds[0])
    assert not torch.equal(embeds[11], embeds[10])


def test_a_clamp_blocks_the_gradient_into_what_it_replaced():
    r = tiny("""
interventions:
  - clamp: blocks.1.attn.hook_pattern[2]
    to: previous_token
  - ablate: blocks.1.attn.hook_z[0]
""")
    tr = Trainer(r, 0)
    tr.intervener.set_step(0)
    b = tr.task.train_batch(0, 8)
    loss_fn(tr.intervener.forward(b), b.targets).backward()
    attn = tr.model.blocks[1].attn
    for W in (attn.W_Q, attn.W_K):
        assert torch.equal(W.grad[2], torch.zeros_like(W.grad[2]))      # pattern replaced: no gradient
        assert W.grad[1].abs().sum() > 0
    for W in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
        assert torch.equal(W.grad[0], torch.zeros_like(W.grad[0]))      # head 0 removed entirely
    assert attn.W_V.grad[2].abs().sum() > 0                              # values of the clamped head still learn


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 60), min_size=2, max_size=6, unique=True).map(sorted),
                min_size=1, max_size=4),
       st.lists(st.integers(0, 59), max_size=12))
def test_active_edits_match_brute_force(windows, jumps):
    ivs = []
    for h, xs in enumerate(windows):
        ws = [[xs[i], xs[i + 1]] for i in range(0, len(xs) - 1, 2)]
        ivs.append(f"  - clamp: blocks.0.attn.hook_pattern[{h}]\n    to: zero\n    steps: {ws}\n")
    r = tiny("interventions:\n" + "".join(ivs), train={"steps": 60, "batch": 8})
    plan = compile_plan(r)
    tr = Trainer(r, 0, plan)
    hp = tr.model.hook_points["blocks.0.attn.hook_pattern"]
    for step in list(range(60)) + jumps:                   # sequential, then random access
        want = {i for i, xs in enumerate(windows)
                if any(xs[k] <= step < xs[k + 1] for k in range(0, len(xs) - 1, 2))}
        got = {e.index for e in plan.active(step)}
        assert got == want
        tr.intervener.set_step(step)
        assert (hp.fn is not None) == bool(want)
        assert {e.index for e in tr.intervener._active} == want
