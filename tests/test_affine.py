"""The affine task and the measures of the affine study, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import clamp
from clamp.measures import copying_scores, negative_similarities, position_accuracies
from clamp.names.yamlio import load_yaml
from clamp.tasks.affine import Affine, AffineOptions, pair_split
from clamp.values import PreviousToken, PreviousTokenOptions


def affine(**kw) -> Affine:
    return Affine(AffineOptions(**kw), seed=3)


def infer(x0: int, x1: int, x2: int, p: int) -> tuple[int, int] | None:
    """(a, b) from three terms, by brute force over every pair (None when several fit)."""
    fits = [(a, b) for a in range(1, p) for b in range(p) if (a * x0 + b) % p == x1 and (a * x1 + b) % p == x2]
    return fits[0] if len(fits) == 1 else None


@settings(max_examples=20, deadline=None)
@given(p=st.sampled_from([5, 7, 11, 13]), length=st.integers(4, 20), step=st.integers(0, 10_000))
def test_sequences_follow_their_recurrence_and_targets_are_the_determined_terms(p, length, step):
    task = affine(modulus=p, length=length, heldout_pairs=3)
    b = task.train_batch(step, 32)
    x = b.tokens.numpy()
    heldout = {tuple(r) for r in task.heldout_pairs.tolist()}
    for row, tg in zip(x, b.targets.numpy()):
        assert ((row >= 0) & (row < p)).all()
        if row[1] != row[0]:
            a = (row[2] - row[1]) * pow(int(row[1] - row[0]), -1, p) % p
            c = (row[1] - a * row[0]) % p
            assert all(row[n + 1] == (a * row[n] + c) % p for n in range(length - 1))
            assert infer(*row[:3], p) == (a, c) and (a, c) not in heldout    # never a held-out pair
        else:
            assert (row == row[0]).all()                                     # a fixed point: constant
        for n in range(length):                        # loss on x_3 .. x_{L-1}: rows 2 .. L-2 predict them
            want = row[n + 1] if 2 <= n < length - 1 else -100
            assert tg[n] == want


def test_heldout_evaluator_uses_only_heldout_pairs_and_the_split_is_fixed():
    task = affine(modulus=7, length=8, heldout_pairs=5)
    tr, ho = pair_split(task.options)
    assert len(tr) + len(ho) == 7 * 6 and not ({tuple(r) for r in tr.tolist()} & {tuple(r) for r in ho.tolist()})
    assert torch.equal(pair_split(AffineOptions(modulus=7, length=8, heldout_pairs=5))[1], ho)
    b = task.evaluators(64)["heldout"]
    pairs = {tuple(r) for r in ho.tolist()}
    for row in b.tokens.numpy():
        fit = infer(*row[:3], 7)
        if fit is not None:
            assert fit in pairs
    assert set(Affine.evaluators_of(AffineOptions(heldout_pairs=0))) == {"train"}


def test_chunked_batches_equal_one_at_a_time():
    task = affine()
    chunk = task.train_batches(5, 4, 16)
    for i, b in enumerate(chunk):
        one = task.train_batch(5 + i, 16)
        assert torch.equal(b.tokens, one.tokens) and torch.equal(b.targets, one.targets)


@pytest.mark.parametrize("key,value,expected", [
    ("modulus", 12, "a prime (so every a has an inverse), e.g. 11 or 13"),
    ("modulus", 1022, "a prime in 2..1021"),
    ("modulus", 1, "a prime in 2..1021"),
    ("length", 3, "at least 4 terms"),
    ("heldout_pairs", 110, "fewer than the 110 pairs"),
])
def test_bad_options_are_located(key, value, expected):
    data, src = load_yaml(f"name: a\ntask: {{name: affine, {key}: {value}}}\n", "a.yaml")
    with pytest.raises(clamp.InputError) as e:
        clamp.recipe_from_data(data, src)
    assert "a.yaml:2" in str(e.value) and f"task.{key}" in str(e.value) and expected in str(e.value)


def test_default_recipe_has_the_studys_measures_and_columns():
    data, src = load_yaml("name: a\ntask: {name: affine}\n", "a.yaml")
    r = clamp.recipe_from_data(data, src)
    from clamp.recipe.outputs import produced
    cols = produced(r)
    assert r.model.layers == 3 and not r.model.attn_only
    assert "position_accuracy/pos2" in cols and "position_accuracy/pos14" in cols and "loss/heldout" in cols
    assert "negative_similarity/blocks.2.attn.hook_attn_scores[3]" in cols
    assert "copying_score/blocks.0.attn.W_O[0]" in cols


# ---------------------------------------------------------------------------------------
# Measures, against loops over the definitions


def test_position_accuracies_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 4, generator=g)
    tokens = torch.randint(4, (6, 5), generator=g)
    got = position_accuracies(logits, tokens)
    for t in range(4):
        want = np.mean([int(logits[b, t].argmax()) == int(tokens[b, t + 1]) for b in range(6)])
        assert got[t].item() == pytest.approx(want)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(3, 9), H=st.integers(1, 3))
def test_negative_similarity_is_the_row_correlation_with_embedding_dissimilarity(seed, T, H):
    g = torch.Generator().manual_seed(seed)
    B, d = 3, 5
    S = torch.randn(B, H, T, T, generator=g).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    vocab = torch.randn(4, d, generator=g)
    tokens = torch.randint(4, (B, T), generator=g)
    emb = vocab[tokens]
    got = negative_similarities(S, emb)
    for h in range(H):
        rs = []
        for b in range(B):
            for i in range(2, T):
                s = S[b, h, i, :i + 1].double().numpy()
                e = emb[b, :i + 1].double().numpy()
                cos = e @ e[i] / (np.linalg.norm(e, axis=1) * np.linalg.norm(e[i]))
                dis = 1 - cos
                if s.std() < 1e-6 or dis.std() < 1e-6:
                    continue
                rs.append(np.corrcoef(s, dis)[0, 1])
        want = np.mean(rs) if rs else 0.0
        assert got[h].item() == pytest.approx(want, abs=1e-4)


def test_negative_similarity_signs():
    """A head scoring keys by dissimilarity scores +1; by similarity -1."""
    T = 6
    emb = torch.eye(T)[None, [0, 1, 0, 2, 1, 0]]                    # [1, T, T] one-hot tokens
    e = emb[0]
    dis = 1 - e @ e.T
    S = torch.stack([dis, -dis])[None].masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    got = negative_similarities(S, emb)
    assert got[0].item() == pytest.approx(1.0) and got[1].item() == pytest.approx(-1.0)


def test_copying_score_is_the_eigenvalue_ratio_of_the_direct_path():
    from clamp.models.seam import build
    seam = build(clamp.recipe_from_data(*_affine_recipe()).shape(), 0)
    with torch.no_grad():                              # LayerNorm scales away from 1, so folding matters
        for name, p in seam.module.named_parameters():
            if name.endswith(".w"):
                p.uniform_(0.5, 1.5)
    got = copying_scores(seam)
    W = {n: p.detach().double().numpy() for n, p in seam.module.named_parameters()}
    for L in range(3):
        for h in range(4):
            M = W["embed.W_E"] @ np.diag(W[f"blocks.{L}.ln1.w"]) @ W[f"blocks.{L}.attn.W_V"][h] \
                @ W[f"blocks.{L}.attn.W_O"][h] @ np.diag(W["ln_final.w"]) @ W["unembed.W_U"]
            lam = np.linalg.eigvals(M)
            want = lam.sum().real / np.abs(lam).sum()
            assert got[f"copying_score/blocks.{L}.attn.W_O[{h}]"] == pytest.approx(want, abs=1e-6)


def test_copying_score_of_an_identity_path_is_one():
    from clamp.models.seam import build
    seam = build(clamp.recipe_from_data(*_affine_recipe()).shape(), 0)
    m = seam.module
    with torch.no_grad():
        d = m.embed.W_E.shape[1]
        m.embed.W_E.copy_(torch.eye(11, d))
        m.unembed.W_U.copy_(torch.eye(d, 11))
        m.blocks[0].attn.W_V[0].copy_(torch.eye(d, 16))
        m.blocks[0].attn.W_O[0].copy_(torch.eye(16, d))
        m.blocks[0].attn.W_O[1].copy_(-torch.eye(16, d))
        m.blocks[0].attn.W_V[1].copy_(torch.eye(d, 16))
    got = copying_scores(seam)
    assert got["copying_score/blocks.0.attn.W_O[0]"] == pytest.approx(1.0)
    assert got["copying_score/blocks.0.attn.W_O[1]"] == pytest.approx(-1.0)


def _affine_recipe():
    return load_yaml("name: a\ntask: {name: affine}\n", "a.yaml")


def test_previous_token_lag():
    pat, _ = PreviousToken(PreviousTokenOptions(lag=2)).value(torch.zeros(1, 1, 5, 5), None,
                                                              type("Ctx", (), {"batch": None})())
    want = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]],
                        dtype=torch.float32)
    assert torch.equal(pat[0, 0], want)


def test_an_affine_run_learns_and_writes_the_studys_columns(tmp_path):
    """A short run of the task's defaults (fewer steps): the loss on the determined terms falls far
    below chance and every study column is written."""
    data, src = load_yaml("name: a\nseeds: [0]\ntask: {name: affine}\n"
                          "train: {steps: 300, eval_every: 100, eval_size: 128}\n", "a.yaml")
    r = clamp.recipe_from_data(data, src)
    run = clamp.run(r, tmp_path / "run")
    rows = run.seeds[0].metrics
    assert rows[-1]["loss"] < 0.6 * math.log(11)
    assert rows[-1]["position_accuracy/pos12"] > rows[-1]["position_accuracy/pos0"]
    assert "negative_similarity/blocks.2.attn.hook_attn_scores[0]" in rows[-1]
    assert "copying_score/blocks.0.attn.W_O[0]" in rows[-1]
