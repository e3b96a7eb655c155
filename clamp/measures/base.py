"""Progress measures, computed at each evaluation (definitions: docs/science.md §4).

Sits under train.py: `evaluate` runs every evaluator of the task through the model with
the step's interventions applied and returns one flat row of metric columns. Column
names use the site vocabulary:

    loss, accuracy                      on the 'train' evaluator
    loss/<evaluator>, accuracy/<evaluator>
    prev_token_score/blocks.L.attn.hook_pattern[h]      (label_prev_token_score/... likewise)
    induction_strength/blocks.L.attn.hook_pattern[h]
    induction_score/blocks.L.attn.hook_pattern[h]

Definitions (A = the head's attention pattern after any clamp, averaged over sequences):
- loss: mean cross-entropy over positions with a target; accuracy: argmax = target there.
- prev_token_score: mean over rows i >= 1 of A[i, i-1]; label_prev_token_score: the same over
  label rows only (few-shot), where the paper's previous-token heads act.
- induction_strength: over rows with induction keys (few-shot: the query), attention
  to the correct keys minus attention to the other keys of the same kind (the other
  labels); in [-1, 1]. With one distractor label this is the paper's measure.
- induction_score: on the task's repeated segments (a random segment repeated), mean over rows in
  the repeats of attention to the key after the row token's previous occurrence
  (Olsson et al.'s prefix matching).
- position_accuracy/pos<t>: on the 'train' evaluator, argmax at position t = token t+1, over every
  sequence (loss mask or not): how much context each position needs.
- negative_similarity: on the 'train' evaluator, per query row i >= 2 the Pearson correlation over
  keys j <= i between the head's pre-softmax score S[i, j] and the dissimilarity 1 - cos(e_i, e_j)
  of the two tokens' embeddings (`hook_embed`), averaged over rows where both vary; in [-1, 1],
  > 0: the head favours tokens unlike the query's (Bhargav & Gu's "negative similarity" heads).
- copying_score (weights): Σλ/Σ|λ| over the eigenvalues λ of the head's direct path
  W_E·diag(ln1.w)·W_V·W_O·diag(ln_final.w)·W_U [vocab, vocab] (Elhage et al. 2021); 1: the head
  raises the logit of the token it attends to, -1: lowers it.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..names.columns import (MEASURES, PATTERN_MEASURES, composition_column, evaluator_column, head_column, pattern_site,
                      position_column, scores_site)
from ..names.registry import NameTaken, register
from ..names.sites import ModelShape
from ..tasks import Batch
from ..tasks.base import loss_and_accuracy

Scorer = Callable[[Tensor, Batch], "tuple[float, float | None]"]     # (logits, batch) → (loss, accuracy)


def prev_token_scores(A: Tensor, rows: Tensor | None = None) -> Tensor:
    """A [batch, head, query, key] → [head]: mean over rows i>=1 (or the rows marked in
    `rows` [batch, query]) of A[i, i-1]."""
    T = A.shape[-1]
    i = torch.arange(1, T, device=A.device)
    prev = A[:, :, i, i - 1]                                   # [batch, head, T-1]
    if rows is None:
        return prev.mean(dim=(0, 2))
    w = rows[:, None, 1:].float()
    return (prev * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)


def induction_strengths(A: Tensor, keys: Tensor, others: Tensor | None) -> Tensor:
    """A [batch, head, query, key]; keys/others [batch, query, key] bool → [head]."""
    rows = keys.any(-1)                                    # [batch, query]
    good = (A * keys[:, None]).sum(-1)                     # [batch, head, query]
    if others is not None:
        good = good - (A * others[:, None]).sum(-1)
    w = rows[:, None].float()
    return (good * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)


def position_accuracies(logits: Tensor, tokens: Tensor) -> Tensor:
    """logits [batch, pos, n_out], tokens [batch, pos] → [pos-1]: accuracy of the prediction at each
    position t of token t+1."""
    return (logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean(0)


def negative_similarities(S: Tensor, embed: Tensor) -> Tensor:
    """S [batch, head, query, key] pre-softmax scores (future keys may be -inf), embed [batch, pos, d]
    token embeddings → [head]: mean over rows i >= 2 of corr_j<=i(S[i, j], 1 - cos(e_i, e_j))."""
    B, H, T, _ = S.shape
    e = F.normalize(embed.float(), dim=-1)
    dis = 1.0 - e @ e.transpose(1, 2)                                   # [batch, query, key]
    causal = torch.ones(T, T, dtype=torch.bool, device=S.device).tril()
    m = causal.float()                                                  # [query, key]
    n = m.sum(-1)                                                       # [query] keys per row
    s = torch.where(causal, S, torch.zeros((), dtype=S.dtype, device=S.device)).float()
    ds = dis[:, None] * m                                               # [batch, 1, query, key]
    s_c = (s - (s * m).sum(-1, keepdim=True) / n[:, None]) * m          # centred over the row's keys
    d_c = (ds - ds.sum(-1, keepdim=True) / n[:, None]) * m
    cov = (s_c * d_c).sum(-1)                                           # [batch, head, query]
    vs, vd = (s_c ** 2).sum(-1), (d_c ** 2).sum(-1)
    ok = (vs > 1e-12 * n) & (vd > 1e-12 * n) & (n >= 3)                 # both vary; at least three keys
    r = torch.where(ok, cov / (vs * vd).clamp_min(1e-30).sqrt(), torch.zeros_like(cov))
    return r.sum(dim=(0, 2)) / ok.float().sum(dim=(0, 2)).clamp_min(1)


REPEATS = "(repeated segments)"      # the key of the induction-score forward in `forwards`/`score`

Outputs = dict[str, tuple[Tensor, dict[str, Tensor]]]     # forward key → (logits, recorded site values)


# ---------------------------------------------------------------------------------------
# A user's measures (plug-ins): metric columns computed at every evaluation


class Measure:
    """A progress measure of one's own: subclass, set `name` (the measure a recipe's `measure:` lists)
    and implement `compute`; register with `@register_measure`. Its columns are `name` or
    `name/<anything>` and must be known before the run (`columns`), so phase rules, stop rules,
    expectations and the graph can name them and be checked when the recipe loads."""

    name: ClassVar[str]
    doc: ClassVar[str] = ""
    record: ClassVar[tuple[str, ...]] = ()     # sites recorded on the 'train' evaluator's forward

    @classmethod
    def columns(cls, shape: ModelShape, evaluators: tuple[str, ...]) -> list[str]:
        """The columns this measure writes for a model of `shape` with these evaluators."""
        return [cls.name]

    def compute(self, outputs: dict[str, tuple[Tensor, dict[str, Tensor]]], batches: dict[str, Batch],
                seam) -> dict[str, float]:
        """One value per column: `outputs` holds each evaluator's (logits [batch, pos, n_out], recorded
        sites: `record` on 'train'), `batches` its batch, `seam` the model (seam.weight(name) reads a
        parameter) with this step's interventions applied to the outputs, not to the weights."""
        raise NotImplementedError


MEASURE_PLUGINS: dict[str, type[Measure]] = {}


def register_measure(cls: type[Measure] | None = None, *, replace: bool = False):
    """`@register_measure` (or `@register_measure(replace=True)`): a name taken by another measure, or
    by one of clamp's own, is refused."""
    def add(c: type[Measure]) -> type[Measure]:
        if c.name in MEASURES:
            raise NameTaken(f"measure name {c.name!r} is clamp's own (measures.py), not replaced by "
                            f"{c.__module__}.{c.__qualname__}: rename it")
        register(MEASURE_PLUGINS, "measure", c.name, c, replace)
        return c
    return add if cls is None else add(cls)


def user_columns(outputs: Outputs, todo: list[tuple[str, Batch, list[str]]], measures: Iterable[str],
                 shape: ModelShape, seam) -> dict[str, float]:
    """The columns of the user's measures among `measures`, from forwards already run."""
    row: dict[str, float] = {}
    batches = {key: batch for key, batch, _ in todo if key != REPEATS}
    outs = {key: outputs[key] for key in batches}
    evs = tuple(batches)
    for m in measures:
        cls = MEASURE_PLUGINS.get(m)
        if cls is None:
            continue
        got = cls().compute(outs, batches, seam)
        allowed = set(cls.columns(shape, evs))
        extra = sorted(set(got) - allowed)
        if extra:
            raise ValueError(f"measure {m!r} wrote columns its columns() does not declare: {', '.join(extra[:3])}")
        row.update({k: float(v) for k, v in got.items()})
    return row


def run_forwards(intervener, todo: list[tuple[str, Batch, list[str]]]) -> Outputs:
    """Each forward of `todo` through `intervener`, recording its sites."""
    outputs: Outputs = {}
    for key, batch, record in todo:
        with intervener.recording(record) as rec:
            outputs[key] = (intervener.forward(batch), rec)
    return outputs


def forwards(evaluators: dict[str, Batch], repeats: Batch | None, measures: Iterable[str],
             shape: ModelShape) -> list[tuple[str, Batch, list[str]]]:
    """The forward passes an evaluation needs: (key, batch, sites to record) for each."""
    measures = tuple(measures)
    patterns = [pattern_site(L) for L in range(shape.layers)]
    record = patterns if any(m in PATTERN_MEASURES for m in measures) else []
    if "negative_similarity" in measures:
        record = record + [scores_site(L) for L in range(shape.layers)] + ["hook_embed"]
    record = record + [s for m in measures if m in MEASURE_PLUGINS for s in MEASURE_PLUGINS[m].record
                       if s not in record]
    out = [(name, batch, record if name == "train" else []) for name, batch in evaluators.items()]
    if "induction_score" in measures and repeats is not None:
        out.append((REPEATS, repeats, patterns))
    return out


@torch.no_grad()
def evaluate(intervener, evaluators: dict[str, Batch], repeats: Batch | None, measures: Iterable[str],
             shape: ModelShape, outputs: Outputs | None = None, scorer: Scorer | None = None) -> dict[str, float]:
    """One row of clamp's own metric columns. The forwards run here through `intervener` unless their
    `outputs` are given (an ensemble runs its members' forwards together: ensemble.py)."""
    todo = forwards(evaluators, repeats, measures, shape)
    if outputs is None:
        outputs = run_forwards(intervener, todo)
    return score(outputs, todo, measures, shape, scorer)


def score(outputs: Outputs, todo: list[tuple[str, Batch, list[str]]], measures: Iterable[str],
          shape: ModelShape, scorer: Scorer | None = None) -> dict[str, float]:
    """clamp's own metric columns of forwards already run (`forwards` lists them; `outputs` holds their
    results); `scorer` is the task's (loss, accuracy) (Task.score; default cross-entropy, argmax)."""
    measures = tuple(measures)
    row: dict[str, float] = {}
    for name, batch, record in todo:
        logits, rec = outputs[name]
        if name == REPEATS:
            keys = batch.induction_keys
            assert keys is not None, "a task's repeated segments mark their induction keys"
            for L in range(shape.layers):
                for h, v in enumerate(induction_strengths(rec[pattern_site(L)], keys, None).tolist()):
                    row[head_column("induction_score", L, h)] = v
            continue
        loss, acc = scorer(logits, batch) if scorer is not None else loss_and_accuracy(logits, batch.targets)
        if "loss" in measures:
            row[evaluator_column("loss", name)] = loss
        if "accuracy" in measures and acc is not None:
            row[evaluator_column("accuracy", name)] = acc
        if "position_accuracy" in measures and name == "train":
            for t, v in enumerate(position_accuracies(logits, batch.tokens).tolist()):
                row[position_column("position_accuracy", t)] = v
        for L in range(shape.layers) if record else ():
            if "negative_similarity" in measures:
                sims = negative_similarities(rec[scores_site(L)], rec["hook_embed"])
                for h, v in enumerate(sims.tolist()):
                    row[head_column("negative_similarity", L, h)] = v
            if pattern_site(L) not in rec:
                continue
            A = rec[pattern_site(L)]                            # [batch, head, query, key]
            if "prev_token_score" in measures:
                for h, v in enumerate(prev_token_scores(A).tolist()):
                    row[head_column("prev_token_score", L, h)] = v
            if "label_prev_token_score" in measures and "label" in batch.roles:
                for h, v in enumerate(prev_token_scores(A, batch.roles["label"]).tolist()):
                    row[head_column("label_prev_token_score", L, h)] = v
            if "induction_strength" in measures and batch.induction_keys is not None:
                for h, v in enumerate(induction_strengths(A, batch.induction_keys, batch.induction_others).tolist()):
                    row[head_column("induction_strength", L, h)] = v
    return row


# ---------------------------------------------------------------------------------------
# Composition (Elhage et al. 2021), from weights


def _head_mats(seam, L: int, fold_ln: bool = True):
    """Per-head QK [head, d, d], OV [head, d, d] of layer L in the row convention (x @ M),
    with the layer's LayerNorm scale folded into the read side."""
    W_Q, W_K, W_V, W_O = (seam.weight(f"blocks.{L}.attn.{w}") for w in ("W_Q", "W_K", "W_V", "W_O"))
    # [H, d, e] each, W_O [H, e, d]
    if fold_ln and seam.shape.norm == "pre":
        w = seam.weight(f"blocks.{L}.ln1.w")[None, :, None]
        W_Q, W_K, W_V = W_Q * w, W_K * w, W_V * w
    QK = W_Q @ W_K.transpose(1, 2)                                       # [H, d, d]
    OV = W_V @ W_O                                                       # [H, d, d]
    return QK, OV


def _scores(QK2: Tensor, OV2: Tensor, OV1: Tensor) -> dict[str, Tensor]:
    """[h1, h2] matrices of K, Q, V composition scores (plain Frobenius norms)."""
    n = lambda m: m.flatten(-2).norm(dim=-1)  # noqa: E731
    K = n(QK2[None] @ OV1.transpose(1, 2)[:, None])                      # ‖QK2 · OV1ᵀ‖ : keys read OV1
    Q = n(OV1[:, None] @ QK2[None])                                      # ‖OV1 · QK2‖  : queries read OV1
    V = n(OV1[:, None] @ OV2[None])                                      # ‖OV1 · OV2‖  : values read OV1
    d1, dqk, dov = n(OV1)[:, None], n(QK2)[None], n(OV2)[None]
    return {"k": K / (dqk * d1), "q": Q / (dqk * d1), "v": V / (dov * d1)}


@torch.no_grad()
def composition_scores(seam) -> dict[str, float]:
    """Columns `{k,q,v}_composition/blocks.L1.attn.W_O[h1]>blocks.L2.attn.W_{K,Q,V}[h2]` for L1 < L2,
    from the weights of a model behind the seam (seam.py)."""
    row = {}
    shape = seam.shape
    mats = [_head_mats(seam, L) for L in range(shape.layers)]
    for L1 in range(shape.layers):
        for L2 in range(L1 + 1, shape.layers):
            sc = _scores(mats[L2][0], mats[L2][1], mats[L1][1])
            for kind, M in sc.items():
                for h1 in range(shape.heads):
                    for h2 in range(shape.heads):
                        row[composition_column(kind, L1, h1, L2, h2)] = float(M[h1, h2])
    return row


@torch.no_grad()
def copying_scores(seam) -> dict[str, float]:
    """Columns `copying_score/blocks.L.attn.W_O[h]`: Σλ/Σ|λ| over the eigenvalues of each head's direct
    path W_E·OV·W_U (LayerNorm scales folded in), from the weights of a model behind the seam."""
    shape = seam.shape
    W_E, W_U = seam.weight("embed.W_E"), seam.weight("unembed.W_U")     # [vocab, d], [d, n_out]
    if shape.norm == "pre":
        W_U = W_U * seam.weight("ln_final.w")[:, None]
    row = {}
    for L in range(shape.layers):
        OV = _head_mats(seam, L)[1]                                       # [H, d, d]
        lam = torch.linalg.eigvals((W_E[None] @ OV @ W_U[None]).double())  # [H, vocab]
        score = lam.sum(-1).real / lam.abs().sum(-1).clamp_min(1e-30)
        for h, v in enumerate(score.tolist()):
            row[head_column("copying_score", L, h)] = v
    return row


@torch.no_grad()
def composition_baseline(shape: ModelShape, draws: int = 64, seed: int = 0) -> dict[str, float]:
    """Mean score of each kind for weights drawn from the init distribution (≈ 1/√d_model)."""
    g = torch.Generator().manual_seed(seed)
    d, e, H = shape.d_model, shape.d_head, draws
    r = lambda *s, std: torch.randn(*s, generator=g) * std  # noqa: E731
    QK2 = r(H, d, e, std=d ** -0.5) @ r(H, d, e, std=d ** -0.5).transpose(1, 2)
    OV2 = r(H, d, e, std=d ** -0.5) @ r(H, e, d, std=(shape.heads * e) ** -0.5)
    OV1 = r(H, d, e, std=d ** -0.5) @ r(H, e, d, std=(shape.heads * e) ** -0.5)
    sc = _scores(QK2, OV2, OV1)
    return {f"{k}_composition": float(m.mean()) for k, m in sc.items()}
