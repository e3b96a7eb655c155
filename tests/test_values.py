"""Every value source against a hand-computed value on a tiny hand-made sequence, plus preserve,
probes, heads chosen by measurement, composition scores and grafts."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny

from clamp.measures import composition_scores
from clamp.models.builtin import BuiltinSeam, build_model
from clamp.names.errors import InputError
from clamp.recipe.compile import compile_plan
from clamp.store.rundir import run_metrics
from clamp.tasks import Batch
from clamp.training.train import Trainer, loss_fn, train_seed

T = 5


def handmade_batch(dim=8, labels=(2, 0), query_like=0) -> Batch:
    """x1 y1 x2 y2 xq with hand-chosen vectors; the query equals exemplar `query_like`."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    vec = torch.zeros(1, T, dim)
    vec[0, 0], vec[0, 2] = a, b
    vec[0, 4] = (a, b)[query_like] + 0.1 * torch.randn(dim, generator=g)
    tokens = torch.tensor([[0, labels[0], 0, labels[1], 0]])
    is_vector = torch.tensor([[True, False, True, False, True]])
    targets = torch.full((1, T), -100)
    targets[0, 4] = labels[query_like]
    keys = torch.zeros(1, T, T, dtype=torch.bool)
    others = torch.zeros(1, T, T, dtype=torch.bool)
    keys[0, 4, 1 + 2 * query_like] = True
    others[0, 4, 3 - 2 * query_like] = True
    roles = {"label": ~is_vector, "query": torch.tensor([[False] * 4 + [True]]),
             "exemplar": torch.tensor([[True, False, True, False, False]])}
    return Batch(tokens, targets, vec, is_vector, roles, keys, others)


def run_once(recipe_extra, sites, batch=None):
    r = tiny(recipe_extra)
    tr = Trainer(r, 0)
    batch = batch or handmade_batch()
    tr.intervener.set_step(0)
    with torch.no_grad(), tr.intervener.recording(sites) as rec:
        logits = tr.intervener.forward(batch)
    return tr, rec, logits, batch


def plain(model, batch, sites):
    m = copy.deepcopy(model)
    out = {}
    for hp in m.hook_points.values():
        hp.fn = None
    for s in sites:
        m.hook_points[s].fn = (lambda name: lambda x: out.__setitem__(name, x) or x)(s)
    with torch.no_grad():
        logits = m(batch.tokens, batch.vectors, batch.is_vector)
    return out, logits


def test_induction_pattern_on_the_query_row():
    tr, rec, _, b = run_once("interventions:\n  - clamp: blocks.1.attn.hook_pattern[2]\n    to: induction\n"
                             "    strength: 0.8\n", ["blocks.1.attn.hook_pattern"])
    A = rec["blocks.1.attn.hook_pattern"][0, 2]
    assert torch.equal(A[4], torch.tensor([0, 0.8, 0, 0.2, 0]))
    ref, _ = plain(tr.model, b, ["blocks.1.attn.hook_pattern"])
    assert torch.equal(A[:4], ref["blocks.1.attn.hook_pattern"][0, 2, :4])


def test_disallow_previous_token():
    tr, rec, _, b = run_once("interventions:\n  - clamp: blocks.0.attn.hook_attn_scores[1]\n"
                             "    to: disallow_previous_token\n",
                             ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"])
    ref, _ = plain(tr.model, b, ["blocks.0.attn.hook_attn_scores"])
    S = ref["blocks.0.attn.hook_attn_scores"][0, 1].clone()
    for i in range(1, T):
        S[i, i - 1] = float("-inf")
    assert torch.equal(rec["blocks.0.attn.hook_attn_scores"][0, 1], S)
    torch.testing.assert_close(rec["blocks.0.attn.hook_pattern"][0, 1], S.softmax(-1), rtol=0, atol=1e-7)
    assert (rec["blocks.0.attn.hook_pattern"][0, 1, torch.arange(1, T), torch.arange(T - 1)] == 0).all()


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_match_by_input_similarity(temperature):
    for q in (0, 1):
        b = handmade_batch(query_like=q)
        tr, rec, _, _ = run_once(f"interventions:\n  - clamp: blocks.1.attn.hook_pattern[0]\n    to: match\n"
                                 f"    temperature: {temperature}\n", ["blocks.1.attn.hook_pattern"], b)
        x = b.vectors[0]
        cos = torch.tensor([torch.nn.functional.cosine_similarity(x[4], x[j], 0) for j in (0, 2)])
        w = (cos == cos.max()).float() if temperature == 0 else (cos / temperature).softmax(0)
        want = torch.tensor([0, w[0], 0, w[1], 0])
        torch.testing.assert_close(rec["blocks.1.attn.hook_pattern"][0, 0, 4], want, rtol=0, atol=1e-6)
        if temperature == 0:
            assert rec["blocks.1.attn.hook_pattern"][0, 0, 4, 1 + 2 * q] == 1


def test_perfect_copy_logits_are_the_heads_scores():
    tr, rec, logits, b = run_once("interventions:\n  - clamp: hook_logits\n    to: perfect_copy\n"
                                  "    head: blocks.1.attn.hook_attn_scores[3]\n",
                                  ["blocks.1.attn.hook_attn_scores"])
    S = rec["blocks.1.attn.hook_attn_scores"][0, 3, 4]                  # query row
    want = torch.full((4,), -1e9)
    want[2], want[0] = S[1], S[3]                                       # labels 2 and 0 sit at 1 and 3
    assert torch.equal(logits[0, 4], want)
    _, plain_logits = plain(tr.model, b, [])
    assert torch.equal(logits[0, :4], plain_logits[0, :4])              # other rows untouched


def test_perfect_copy_trains_only_the_match():
    r = tiny("interventions:\n  - clamp: hook_logits\n    to: perfect_copy\n"
             "    head: blocks.1.attn.hook_attn_scores[3]\n")
    tr = Trainer(r, 0)
    tr.intervener.set_step(0)
    b = tr.task.train_batch(0, 8)
    loss_fn(tr.intervener.forward(b), b.targets).backward()
    a1 = tr.model.blocks[1].attn
    assert tr.model.unembed.W_U.grad.abs().sum() == 0 and a1.W_V.grad.abs().sum() == 0
    assert a1.W_O.grad.abs().sum() == 0
    assert a1.W_Q.grad[3].abs().sum() > 0 and a1.W_K.grad[3].abs().sum() > 0
    assert a1.W_Q.grad[[0, 1, 2]].abs().sum() == 0


def test_embedding_and_previous_token_input():
    tr, rec, _, b = run_once("interventions:\n  - clamp: blocks.0.hook_resid_post\n    to: embedding\n"
                             "  - clamp: blocks.1.attn.hook_pattern\n    to: previous_token_input\n",
                             ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"])
    assert torch.equal(rec["blocks.0.hook_resid_post"], rec["hook_embed"])
    # by hand: layer-1 LN, per-head q from each position, k from the position before, RoPE, softmax
    P = dict(tr.model.named_parameters())
    e = rec["hook_embed"][0]                                            # [T, d]
    shifted = torch.cat([e[:1], e[:-1]])

    def ln(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5) \
            * P["blocks.1.ln1.w"] + P["blocks.1.ln1.b"]

    def rope(x):
        out = x.clone()
        for t in range(T):
            for j in range(x.shape[1] // 2):
                th = t / 10000 ** (2 * j / x.shape[1])
                out[t, 2 * j] = x[t, 2 * j] * math.cos(th) - x[t, 2 * j + 1] * math.sin(th)
                out[t, 2 * j + 1] = x[t, 2 * j] * math.sin(th) + x[t, 2 * j + 1] * math.cos(th)
        return out
    for h in range(4):
        q = rope(ln(e) @ P["blocks.1.attn.W_Q"][h])
        k = rope(ln(shifted) @ P["blocks.1.attn.W_K"][h])
        s = q @ k.T / math.sqrt(4) + torch.triu(torch.full((T, T), float("-inf")), 1)
        torch.testing.assert_close(rec["blocks.1.attn.hook_pattern"][0, h], s.softmax(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preserve", [["patterns"], ["values"], ["patterns", "values"]])
def test_ablation_with_preserved_patterns_or_values(preserve):
    sites = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v", "blocks.0.attn.hook_v"]
    tr, rec, _, b = run_once("interventions:\n  - ablate: blocks.0.attn.hook_v[1,2]\n"
                             f"    preserve: {preserve}\n", sites)
    ref, _ = plain(tr.model, b, sites)
    assert (rec["blocks.0.attn.hook_v"][:, :, [1, 2]] == 0).all()
    same_pat = torch.equal(rec["blocks.1.attn.hook_pattern"], ref["blocks.1.attn.hook_pattern"])
    same_v = torch.equal(rec["blocks.1.attn.hook_v"], ref["blocks.1.attn.hook_v"])
    assert same_pat == ("patterns" in preserve)
    assert same_v == ("values" in preserve)


def test_preserve_keeps_gradients_through_the_reference_pass():
    r = tiny("interventions:\n  - ablate: blocks.0.attn.hook_v[*]\n    preserve: [patterns]\n")
    tr = Trainer(r, 0)
    tr.intervener.set_step(0)
    b = tr.task.train_batch(0, 8)
    loss_fn(tr.intervener.forward(b), b.targets).backward()
    a0 = tr.model.blocks[0].attn
    assert a0.W_V.grad.abs().sum() > 0          # the reference pass carries layer-0 values into the patterns


def test_probes_select_heads_by_measurement(tmp_path):
    base = tiny(train={"steps": 10, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 32})
    train_seed(base, 0, tmp_path / "base")
    from clamp.training.train import read_metrics
    last = read_metrics(tmp_path / "base" / "metrics.jsonl")[-1]
    scores = [last[f"prev_token_score/blocks.0.attn.hook_pattern[{h}]"] for h in range(4)]
    top2 = tuple(sorted(sorted(range(4), key=lambda h: -scores[h])[:2]))
    r = tiny(f"""
subcircuits:
  prev_heads:
    sites: [blocks.0.attn.hook_v]
    select: {{layer: 0, by: prev_token_score, top: 2, run: {tmp_path / 'base'}}}
  others_now:
    sites: [blocks.0.attn.hook_v]
    select: {{layer: 0, by: prev_token_score, top: 2, complement: true}}
probes:
  no_prev: [{{ablate: prev_heads, preserve: [values]}}]
  no_others: [{{ablate: others_now, preserve: [patterns]}}]
""", train={"steps": 10, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 32})
    plan = compile_plan(r, 0, probe="no_prev", metrics_of=run_metrics)       # compile reads no file itself
    [ablation] = [e for e in plan.edits if e.kind == "ablate"]
    assert ablation.site.heads == top2 and "heads" in ablation.note
    assert "heads " + str(list(top2)) in plan.text()
    tr = Trainer(r, 0)
    row = tr.evaluate()
    now = [row[f"prev_token_score/blocks.0.attn.hook_pattern[{h}]"] for h in range(4)]
    others = sorted(sorted(range(4), key=lambda h: -now[h])[2:])
    assert row["heads@no_others"] == {"others_now": others}
    assert {"loss@no_prev", "accuracy@no_others", "loss/test_relabel@no_prev"} <= set(row)
    with pytest.raises(InputError, match="probes only"):
        tiny("""
subcircuits:
  s: {sites: [blocks.0.attn.hook_v], select: {layer: 0, by: prev_token_score, top: 1}}
interventions: [{ablate: s}]
""")


def test_composition_scores_by_hand():
    m = build_model(tiny().shape(), 0)
    with torch.no_grad():
        m.blocks[1].ln1.w.uniform_(0.5, 1.5)
    row = composition_scores(BuiltinSeam(m))
    P = dict(m.named_parameters())
    w = torch.diag(P["blocks.1.ln1.w"])
    for h1, h2 in [(0, 0), (1, 3), (3, 2)]:
        OV1 = P["blocks.0.attn.W_V"][h1] @ P["blocks.0.attn.W_O"][h1]
        WQ, WK, WV = (w @ P[f"blocks.1.attn.W_{x}"][h2] for x in "QKV")
        QK2, OV2 = WQ @ WK.T, WV @ P["blocks.1.attn.W_O"][h2]
        fro = torch.linalg.matrix_norm
        k = fro(QK2 @ OV1.T) / (fro(QK2) * fro(OV1))
        q = fro(OV1 @ QK2) / (fro(QK2) * fro(OV1))
        v = fro(OV1 @ OV2) / (fro(OV2) * fro(OV1))
        for kind, val in zip("kqv", (k, q, v)):
            col = f"{kind}_composition/blocks.0.attn.W_O[{h1}]>blocks.1.attn.W_{kind.upper()}[{h2}]"
            assert row[col] == pytest.approx(float(val.detach()), rel=1e-4)


def test_graft_takes_the_donors_activation(tmp_path):
    donor = tiny(train={"steps": 8, "batch": 8, "lr": 1e-2, "eval_every": 4, "eval_size": 16})
    train_seed(donor, 0, tmp_path / "donor")
    tr, rec, _, b = run_once(f"interventions:\n  - clamp: blocks.0.hook_resid_post\n    to: graft\n"
                             f"    run: {tmp_path / 'donor'}\n", ["blocks.0.hook_resid_post"])
    dm = build_model(donor.shape(), 0)
    from clamp.store.rundir import list_checkpoints
    dm.load_state_dict(torch.load(list_checkpoints(tmp_path / "donor")[-1][1], weights_only=True)["model"])
    want, _ = plain(dm, b, ["blocks.0.hook_resid_post"])
    assert torch.equal(rec["blocks.0.hook_resid_post"], want["blocks.0.hook_resid_post"])
    ref, _ = plain(tr.model, b, ["blocks.0.hook_resid_post"])
    assert not torch.equal(ref["blocks.0.hook_resid_post"], want["blocks.0.hook_resid_post"])


def test_posthoc_probes_equal_online_probes(tmp_path):
    """A probe given to the run and the same probe applied to its checkpoints afterwards agree."""
    from clamp.training.posthoc import probe_run
    from clamp.training.train import read_metrics
    train = {"steps": 12, "batch": 8, "lr": 1e-2, "eval_every": 4, "eval_size": 32, "checkpoint_every": 4}
    probe = "probes:\n  copy:\n    - clamp: hook_logits\n      to: perfect_copy\n      head: blocks.1.attn.hook_attn_scores[1]\n"  # noqa: E501
    online = tiny(probe, train=train)
    train_seed(online, 0, tmp_path / "online")
    plain_run = tiny(train=train)
    train_seed(plain_run, 0, tmp_path / "plain")
    (tmp_path / "probes.yaml").write_text(probe)
    rows = probe_run(tmp_path / "plain", tmp_path / "probes.yaml")[0]
    want = {r["step"]: r for r in read_metrics(tmp_path / "online" / "metrics.jsonl")}
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:
        assert r["loss@copy"] == pytest.approx(want[r["step"]]["loss@copy"], rel=1e-6)
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], rel=1e-6)
    (tmp_path / "bad.yaml").write_text("probes:\n  x: [{ablate: blocks.9.attn.hook_z[0]}]\n")
    from clamp.names.errors import InputError
    with pytest.raises(InputError, match="bad.yaml:2: probes.x"):
        probe_run(tmp_path / "plain", tmp_path / "bad.yaml")


def test_clamp_probe_prints_every_evaluator_and_keeps_each_probe_files_results(tmp_path, capsys):
    """Two probes files applied one after the other: each writes its own file, and the printed table
    has every evaluator's loss and accuracy under the probe."""
    from clamp.cli import main
    from clamp.training.train import read_metrics
    train = {"steps": 8, "batch": 8, "lr": 1e-2, "eval_every": 4, "eval_size": 16, "checkpoint_every": 4}
    train_seed(tiny(train=train), 0, tmp_path / "run")
    (tmp_path / "first.yaml").write_text("probes:\n  a: [{ablate: blocks.0.attn.hook_z[0]}]\n")
    (tmp_path / "second.yaml").write_text("probes:\n  b: [{ablate: blocks.1.attn.hook_z[1]}]\n")
    assert main(["probe", str(tmp_path / "run"), str(tmp_path / "first.yaml")]) == 0
    out = capsys.readouterr().out
    for ev in ("test_relabel", "heldout_exemplars", "heldout_classes"):
        assert f"accuracy/{ev}@a" in out and f"loss/{ev}@a" in out
    assert main(["probe", str(tmp_path / "run"), str(tmp_path / "second.yaml")]) == 0
    first = read_metrics(tmp_path / "run" / "probes_first.jsonl")
    second = read_metrics(tmp_path / "run" / "probes_second.jsonl")
    assert [r["step"] for r in first] == [r["step"] for r in second] == [4, 8]
    assert "loss@a" in first[0] and "loss@b" in second[0] and "loss@b" not in first[0]
