"""Head roles on constructed attention patterns: a head built for a role scores as one, a head built
for another does not; each definition against a brute-force loop over rows and keys."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clamp.measures.attention import (
    duplicate_token_scores,
    first_position_scores,
    induction_strengths,
    prev_token_scores,
    uniformities,
)

T = 12


def head(kind: str, tokens: list[int]) -> torch.Tensor:
    """One constructed head's pattern [T, T] (rows sum to 1 over keys j <= i)."""
    A = torch.zeros(T, T)
    for i in range(T):
        earlier = [j for j in range(i) if tokens[j] == tokens[i]]
        if kind == "previous" and i:
            A[i, i - 1] = 1
        elif kind == "uniform":
            A[i, : i + 1] = 1 / (i + 1)
        elif kind == "sink":
            A[i, 0] = 1
        elif kind == "duplicate" and earlier:
            A[i, earlier] = 1 / len(earlier)
        elif kind == "induction" and earlier:
            A[i, earlier[-1] + 1] = 1
        else:
            A[i, i] = 1                                   # otherwise: itself
    return A


TOKENS = [5, 1, 2, 3, 4, 6, 1, 2, 3, 4, 6, 7]           # a segment, then its repeat
KINDS = ["previous", "uniform", "sink", "duplicate", "induction"]


def scores() -> dict[str, dict[str, float]]:
    A = torch.stack([head(k, TOKENS) for k in KINDS])[None]           # [1, head, T, T]
    ids = torch.tensor([TOKENS])
    keys = torch.zeros(1, T, T, dtype=torch.bool)                      # where an induction head looks
    for i in range(T):
        earlier = [j for j in range(i) if TOKENS[j] == TOKENS[i]]
        if earlier:
            keys[0, i, earlier[-1] + 1] = True
    got = {"previous": prev_token_scores(A), "uniform": uniformities(A), "sink": first_position_scores(A),
           "duplicate": duplicate_token_scores(A, ids), "induction": induction_strengths(A, keys, None)}
    return {role: dict(zip(KINDS, v.tolist())) for role, v in got.items()}


@pytest.mark.parametrize("role", KINDS)
def test_a_head_built_for_a_role_scores_highest_on_it(role):
    s = scores()[role]
    assert s[role] == pytest.approx(1.0)
    assert all(s[other] < 0.5 for other in KINDS if other != role), s


def test_induction_is_not_previous_token_outside_the_copy():
    s = scores()
    assert s["previous"]["induction"] < 0.6 and s["duplicate"]["induction"] == pytest.approx(0.0)
    assert s["uniform"]["uniform"] == pytest.approx(1.0) and s["uniform"]["sink"] == pytest.approx(0.0)


def brute(A, ids):
    """Each definition as a loop: (previous, first position, uniformity, duplicate) per head."""
    B, H, n, _ = A.shape
    out = []
    for h in range(H):
        prev = first = unif = 0.0
        dup, dup_rows = 0.0, 0
        for b in range(B):
            for i in range(1, n):
                row = A[b, h, i, : i + 1].tolist()
                prev += row[i - 1]
                first += row[0]
                unif += -sum(p * math.log(max(p, 1e-12)) for p in row) / math.log(i + 1)
                earlier = [j for j in range(i) if ids[b, j] == ids[b, i]]
                if earlier:
                    dup += sum(row[j] for j in earlier)
                    dup_rows += 1
        rows = B * (n - 1)
        out.append((prev / rows, first / rows, unif / rows, dup / max(dup_rows, 1)))
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 9), vocab=st.integers(1, 4))
def test_definitions_match_a_loop(seed, n, vocab):
    g = torch.Generator().manual_seed(seed)
    scores_ = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    A = scores_.masked_fill(~mask, float("-inf")).softmax(-1)           # [batch, head, query, key]
    ids = torch.randint(0, vocab, (2, n), generator=g)
    want = brute(A, ids)
    got = list(zip(prev_token_scores(A).tolist(), first_position_scores(A).tolist(), uniformities(A).tolist(),
                   duplicate_token_scores(A, ids).tolist()))
    for w, g_ in zip(want, got):
        assert g_ == pytest.approx(w, abs=1e-9)
