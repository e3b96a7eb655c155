"""Tasks: determinism and the structure REFERENCE.md §1–2 asks for, checked sequence by sequence."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clamp.tasks import TASKS
from clamp.tasks.fewshot import FewshotOptions
from clamp.tasks.repeat_tokens import RepeatTokensOptions


def fewshot(seed=0, **kw):
    return TASKS["fewshot"](FewshotOptions(**kw), seed)


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = fewshot(3), fewshot(3)
    for step in (0, 7, 123):
        x, y = a.train_batch(step, 16), b.train_batch(step, 16)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.vectors, y.vectors)
    assert not torch.equal(a.train_batch(1, 16).vectors, a.train_batch(2, 16).vectors)
    assert not torch.equal(fewshot(4).train_batch(1, 16).vectors, a.train_batch(1, 16).vectors)
    e1, e2 = a.evaluators(32), b.evaluators(32)
    assert all(torch.equal(e1[k].vectors, e2[k].vectors) for k in e1)


@pytest.mark.parametrize("kw", [{}, {"pairs": 4, "burstiness": 2}, {"pairs": 3, "distractors": 1, "labels": 4},
                                {"pairs": 3, "zipf": 1.0, "noise": 0.3}])
def test_fewshot_sequence_structure(kw):
    t = fewshot(1, **kw)
    o = t.options
    b = t.train_batch(0, 64)
    P = o.pairs
    for i in range(64):
        cls = b.classes[i, 0:2 * P:2]
        labs = b.tokens[i, 1:2 * P:2]
        q = b.classes[i, -1]
        assert (cls == q).sum() == o.burstiness                      # the answer is in context
        assert len(set(cls.tolist())) == 1 + o.n_distractors()
        for c in set(cls.tolist()):                                  # one label per class, distinct
            assert len(set(labs[cls == c].tolist())) == 1
        assert len(set(labs.tolist())) == len(set(cls.tolist()))
        assert b.targets[i, -1] == labs[cls == q][0]
        assert (b.targets[i, :-1] == -100).all()
        keys = b.induction_keys[i, -1].nonzero().flatten()
        assert set(keys.tolist()) == {2 * j + 1 for j in range(P) if cls[j] == q}
        others = b.induction_others[i, -1].nonzero().flatten()
        assert set(others.tolist()) == {2 * j + 1 for j in range(P) if cls[j] != q}
        assert not b.induction_keys[i, :-1].any()


def test_label_sets_are_split_and_evaluators_use_the_right_sets():
    t = fewshot(0, offset=0.0, spread=1.0)          # isotropic: vectors are the prototypes themselves
    train = {tuple(s) for s in t.train_sets.tolist()}
    held = {tuple(s) for s in t.heldout_sets.tolist()}
    assert len(train) == 8 and len(held) == 2 and not train & held
    assert train | held == set(itertools.combinations(range(5), 2))
    ev = t.evaluators(200)
    assert set(ev) == {"train", "test_relabel", "heldout_exemplars", "heldout_classes"}

    def sets(batch):
        return {tuple(sorted(set(r.tolist()))) for r in batch.tokens[:, 1:4:2]}
    assert sets(ev["train"]) <= train
    assert sets(ev["test_relabel"]) <= held
    assert sets(t.train_batch(5, 200)) <= train
    # held-out classes are new prototypes; held-out exemplars are noisy versions of training ones
    protos = t.protos
    hc = ev["heldout_classes"].vectors[:, -1]
    assert torch.cdist(hc, protos).min() > 1.0
    he = ev["heldout_exemplars"].vectors[:, -1]
    d = torch.cdist(he, protos)
    assert (d.argmin(1) == ev["heldout_exemplars"].classes[:, -1]).float().mean() > 0.95
    assert d.min() > 1e-3


def test_zipf_makes_low_ranks_frequent():
    t = fewshot(0, zipf=1.5)
    q = t.train_batch(0, 4000).classes[:, -1]
    counts = torch.bincount(q, minlength=50).float()
    assert counts[0] > 5 * counts[10] and counts[:5].sum() > 0.5 * counts.sum()


def test_offset_prototypes_are_correlated():
    t = fewshot(0, offset=1.0, spread=0.5)
    x = t.train_batch(0, 500).vectors[:, 0]
    cos = torch.nn.functional.cosine_similarity(x[:250], x[250:])
    assert cos.mean() > 0.6


def test_repeat_tokens_structure():
    t = TASKS["repeat_tokens"](RepeatTokensOptions(vocab=30, length=24, segment=6), 0)
    b = t.train_batch(0, 100)
    for i in range(100):
        copy = b.roles["copy"][i].nonzero().flatten()
        assert len(copy) == 6 and (copy.diff() == 1).all()
        rows = b.induction_keys[i].nonzero()
        for row, key in rows.tolist():
            assert b.tokens[i, key - 1] == b.tokens[i, row] and key <= row
        tgt = (b.targets[i] != -100).nonzero().flatten()
        assert len(tgt) == 5 and (b.targets[i, tgt] == b.tokens[i, tgt + 1]).all()
    starts = {int(b.roles["copy"][i].nonzero()[0]) for i in range(100)}
    assert len(starts) > 5                       # the copy is not at a fixed place
    p = t.repeated_segments(4)
    assert torch.equal(p.tokens[:, :12], p.tokens[:, 12:])


@pytest.mark.parametrize("min_gap", [1, 3, 6])
def test_repeat_tokens_gaps(min_gap):
    """The copy starts `gap` >= min_gap after the original (b - gap); below the segment length the
    spans overlap and the copy, written token by token, is periodic."""
    t = TASKS["repeat_tokens"](RepeatTokensOptions(vocab=30, length=24, segment=6, min_gap=min_gap), 0)
    b = t.train_batch(0, 300)
    gaps = []
    for i in range(300):
        copy = b.roles["copy"][i].nonzero().flatten().tolist()
        first = copy[0]
        nearest = b.induction_keys[i, first].nonzero().flatten().max().item()
        gap = first - nearest + 1
        gaps.append(gap)
        for row in copy:
            assert b.tokens[i, row] == b.tokens[i, row - gap]                    # a copy at that gap
            keys = b.induction_keys[i, row].nonzero().flatten().tolist()
            assert keys[-1] == row - gap + 1 and all((row - k + 1) % gap == 0 for k in keys)
    assert min(gaps) >= min_gap and len(set(gaps)) > 3
    assert (min(gaps) < 6) == (min_gap < 6)                                    # overlaps only below the segment


@settings(max_examples=25, deadline=None)
@given(task=st.sampled_from(["fewshot", "repeat_tokens"]), seed=st.integers(0, 10 ** 6),
       start=st.integers(0, 10 ** 6), count=st.integers(1, 20), size=st.integers(1, 9))
def test_a_chunk_of_training_batches_is_the_batches_one_at_a_time(task, seed, start, count, size):
    """Task.train_batches (the training loop's chunks) equals train_batch step by step, every field."""
    import dataclasses
    t = TASKS[task](TASKS[task].Options(), seed)
    for i, b in enumerate(t.train_batches(start, count, size)):
        a = t.train_batch(start + i, size)
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, dict):
                assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
            elif x is None:
                assert y is None
            else:
                assert torch.equal(x, y), f.name
