"""Ensembles of any adapted family (clamp/models/folded.py): K transformers-family or user-factory
models with the member axis folded into the batch give each run what it gives alone.

The reference is the ordinary one-run loop (train.train_seed) on the same recipe and seed. GPT-2,
GPT-NeoX and the user factory: metrics.jsonl byte-identical and the last checkpoint (parameters and
optimizer moments) bit-equal. Llama to rounding: its RMSNorm reads its input twice beside the
residual stream, a gradient sum of three terms whose order autograd takes from the graph, and the
folded graph orders it otherwise (the same reason as a built-in value source reading activations).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny

from clamp.models.folded import fold_problem
from clamp.models.seam import build, stack, stack_problem
from clamp.recipe.spec import load_recipe
from clamp.store.rundir import list_checkpoints
from clamp.tasks import TASKS
from clamp.training.ensemble import train_ensemble
from clamp.training.grouping import alone_because, ensemble_key
from clamp.training.train import train_seed

pytest.importorskip("nnsight")

ROOT = Path(__file__).resolve().parents[1]
TASK = {"name": "repeat_tokens", "vocab": 12, "segment": 4, "length": 12}
TRAIN = {"steps": 12, "batch": 4, "lr": 1e-2, "eval_every": 6, "eval_size": 8, "checkpoint_every": 6}
VARIANTS = {
    "plain": "",
    "pattern": "interventions: [{ablate: blocks.0.attn.hook_pattern[1], steps: [0, 6]}]",
    "held freeze": "interventions: [{freeze: blocks.1.attn.W_Q[0], steps: [2, 9], optimizer_state: hold}]",
    "z": "interventions: [{ablate: blocks.0.attn.hook_z, steps: [3, 10], how: zero}]",
}


def model(family: str) -> dict:
    return {"family": family, "layers": 2, "heads": 2, "d_model": 16, "d_mlp": 32}


def _ckpt(d: Path) -> dict:
    return torch.load(list_checkpoints(d)[-1][1], weights_only=True)


def _compare(tmp_path, runs, exact: bool) -> None:
    results = train_ensemble([(r, s, tmp_path / f"ens/{k}/{s}", None) for k, r, s in runs])
    assert all(isinstance(x, dict) and x["status"] == "ok" for x in results), results
    assert all(x["ensemble"]["members"] == len(runs) for x in results)
    for k, r, s in runs:
        assert train_seed(r, s, tmp_path / f"alone/{k}/{s}")["status"] == "ok"
        ens, alone = (tmp_path / f"{w}/{k}/{s}" for w in ("ens", "alone"))
        if exact:
            assert (ens / "metrics.jsonl").read_text() == (alone / "metrics.jsonl").read_text(), k
        else:
            for a, b in zip(*((d / "metrics.jsonl").read_text().splitlines() for d in (ens, alone))):
                ra, rb = json.loads(a), json.loads(b)
                assert ra.keys() == rb.keys()
                for c in ra:
                    if isinstance(ra[c], float):
                        assert ra[c] == pytest.approx(rb[c], rel=1e-4, abs=1e-6), (k, c)
        a, b = _ckpt(ens), _ckpt(alone)
        assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
        # to rounding: Adam divides by the root of the second moment, so an element whose gradient is
        # near zero moves by ~lr whatever the sign of its rounding; tensors agree in norm, not elementwise
        same = torch.equal if exact else (lambda x, y: float((x - y).norm()) <= 1e-3 * float(y.norm()) + 1e-12)
        for n in a["model"]:
            assert same(a["model"][n], b["model"][n]), (k, n)
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert same(sa[i]["exp_avg"], sb[i]["exp_avg"]), (k, i)


def test_a_gpt2_suite_as_one_ensemble_equals_its_runs_alone(tmp_path):
    """Four variants (a pattern ablation, a freeze holding its optimizer state, a zeroed hook_z, none)
    x two seeds of GPT-2: one ensemble of eight, each member bit-equal to its run alone."""
    runs = [(k, tiny(v, model=model("gpt2"), task=TASK, train=TRAIN), s) for k, v in VARIANTS.items() for s in (0, 1)]
    assert {alone_because(r) for _, r, _ in runs} == {""}
    assert len({ensemble_key(r) for _, r, _ in runs}) == 1
    _compare(tmp_path, runs, exact=True)


@pytest.mark.parametrize("family, exact", [("gpt_neox", True), ("llama", False)])
def test_other_transformers_families_fold(tmp_path, family, exact):
    runs = [(k, tiny(VARIANTS[k], model=model(family), task=TASK, train=TRAIN), s)
            for k in ("plain", "pattern") for s in (0, 1)]
    _compare(tmp_path, runs, exact)


def test_a_user_factory_folds(tmp_path):
    """The shipped user model (recipes/user_model/tiny_lm.py) in an ensemble, with a head ablation."""
    base = ["train.steps=12", "train.batch=4", "train.eval_every=6", "train.eval_size=8", "train.checkpoint_every=6",
            "model.d_model=16", "task.length=12", "task.segment=4"]
    plain = load_recipe(ROOT / "recipes" / "user_model" / "tiny_lm.yaml", base)
    ablated = load_recipe(ROOT / "recipes" / "user_model" / "tiny_lm.yaml",
                          [*base, "interventions=[{ablate: blocks.1.attn.hook_pattern[0], steps: [0, 8]}]"])
    assert alone_because(plain) == ""
    _compare(tmp_path, [("plain", plain, 0), ("ablated", ablated, 1)], exact=True)


def test_the_folded_forward_is_each_model_alone():
    """Logits of three folded GPT-2 members on their own batches equal each model built alone, and a
    member's own forward (what probes and value sources call) equals them too."""
    r = tiny(model=model("gpt2"), task=TASK, train=TRAIN)
    st = stack(r.shape(), [3, 4, 5])
    batches = TASKS["repeat_tokens"](r.task.options, 0).train_batches(0, 3, 4)
    out = st.forward_batches(batches)                          # [3, batch, pos, vocab]
    for k, seed in enumerate((3, 4, 5)):
        alone = build(r.shape(), seed).forward(batches[k])
        assert torch.equal(out[k], alone)
        assert torch.equal(st.member(k).forward(batches[k]), alone)
        assert torch.equal(st.forward_batches([batches[k]], [k])[0], alone)     # a subset of members


class MixedRoot(torch.nn.Module):
    """A module whose root holds a parameter beside submodules with parameters."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.inner = torch.nn.Linear(2, 2)


TIED = """
import torch, clamp, tiny_lm


class Tied(tiny_lm.TinyLM):
    def forward(self, tokens):                  # unembeds with the embedding's weight, read directly
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.embed.weight.T


@clamp.model_factory(clamp.Adapter(blocks="blocks", attn="attn", pattern="source.torch_softmax_0", q="q", k="k",
                                   v="v", o="o", mlp="mlp", norms=("ln1", "ln2"), embed="embed", pos_embed="pos",
                                   final_norm="ln_f"))
def tied(*, layers, heads, d_model, d_head, vocab, n_ctx):
    return Tied(layers, heads, d_model, d_head, 4 * d_model, vocab, n_ctx)
"""


def test_a_module_that_reads_a_leafs_weight_trains_alone_and_says_why(tmp_path):
    """A forward that reads `self.embed.weight` instead of calling the module cannot be folded: the
    meta forward finds it, the runs train one by one, and alone_because names the cause."""
    (tmp_path / "tied.py").write_text(TIED)
    (tmp_path / "tiny_lm.py").write_text((ROOT / "recipes" / "user_model" / "tiny_lm.py").read_text())
    (tmp_path / "r.yaml").write_text(
        "plugins: [tiny_lm.py, tied.py]\nmodel: {module: 'tied:tied', layers: 1, heads: 2, d_model: 16}\n"
        "task: {name: repeat_tokens, vocab: 12, segment: 4, length: 12}\n"
        "train: {steps: 4, batch: 4, eval_every: 2, eval_size: 8}\n")
    r = load_recipe(tmp_path / "r.yaml")
    why = alone_because(r)
    assert "cannot be folded" in why and "weight" in why, why
    assert ensemble_key(r) is None


def test_what_cannot_fold_says_why():
    assert "root module holds parameters" in fold_problem(MixedRoot())
    assert fold_problem(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))) == ""
    m = torch.nn.Module()
    m.block = MixedRoot()
    assert "module 'block' holds parameters of its own (scale)" in fold_problem(m)
    builtin_nnsight = tiny(model={"layers": 1, "heads": 2, "d_model": 8, "backend": "nnsight"})
    assert "nnsight trace of one model" in stack_problem(builtin_nnsight.shape())


def test_a_failing_gpt2_member_fails_alone_and_the_others_go_on(tmp_path):
    """In a folded ensemble, a member whose value source raises (inside the family's nnsight trace) and
    one whose loss becomes NaN fail with the reasons they give alone; the member left trains on, equal
    to its run alone."""
    from conftest import registries_restored

    from clamp.values import ValueSource, register_value
    with registries_restored():
        @register_value
        class Raises(ValueSource):
            from dataclasses import dataclass as _dc

            @_dc(frozen=True)
            class Options:
                pass
            name, sites = "test_raises_at_2", ("*",)

            def value(self, x, site, ctx):
                if ctx.step >= 2:
                    raise RuntimeError("the source gave up")
                return x, None

        @register_value
        class Nan(Raises):
            name = "test_nan_at_3"

            def value(self, x, site, ctx):
                return (x * float("nan") if ctx.step >= 3 else x), None

        runs = [tiny("interventions: [{clamp: blocks.0.attn.hook_z, to: test_raises_at_2}]", model=model("gpt2"),
                     task=TASK, train=TRAIN),
                tiny("interventions: [{clamp: hook_logits, to: test_nan_at_3}]", model=model("gpt2"), task=TASK,
                     train=TRAIN),
                tiny(model=model("gpt2"), task=TASK, train=TRAIN)]
        res = train_ensemble([(r, 0, tmp_path / f"e{i}", None) for i, r in enumerate(runs)])
        assert res[0]["status"] == "failed" and "the source gave up" in res[0]["error"], res[0]
        assert res[1]["status"] == "failed" and res[1]["error"] == "training loss became nan at step 3"
        assert res[2]["status"] == "ok"
        for i, r in enumerate(runs):
            alone = train_seed(r, 0, tmp_path / f"a{i}")
            assert alone["status"] == res[i]["status"] and alone["steps"] == res[i]["steps"], (i, alone, res[i])
        assert (tmp_path / "e2" / "metrics.jsonl").read_text() == (tmp_path / "a2" / "metrics.jsonl").read_text()


def test_clamp_bench_trains_a_gpt2_suite_as_one_ensemble_with_the_same_table(tmp_path):
    """Through the public interface: `clamp.bench` on a GPT-2 suite (2 variants x 2 seeds) trains one
    ensemble of four, and its results.csv equals the same suite run by run (`ensemble=False`)."""
    import csv

    import clamp
    (tmp_path / "suite.yaml").write_text(
        "name: gpt2_small\n"
        "base:\n"
        "  model: {family: gpt2, layers: 2, heads: 2, d_model: 16, d_mlp: 32}\n"
        "  task: {name: repeat_tokens, vocab: 12, segment: 4, length: 12}\n"
        "  train: {steps: 12, batch: 4, lr: 1.0e-2, eval_every: 6, eval_size: 8}\n"
        "seeds: [0, 1]\n"
        "variants:\n"
        "  plain: {}\n"
        "  prev: {interventions: [{clamp: 'blocks.0.attn.hook_pattern[0]', to: previous_token}]}\n")
    suite = clamp.load_suite(tmp_path / "suite.yaml")
    clamp.bench(suite, tmp_path / "ens", workers=1)
    clamp.bench(suite, tmp_path / "alone", workers=1, ensemble=False)
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "ens" / "runs").glob("*/seed_*/summary.json")]
    assert len(summaries) == 4 and all(sm["ensemble"] == {"members": 4} for sm in summaries)
    assert all("ensemble" not in json.loads(p.read_text())
               for p in (tmp_path / "alone" / "runs").glob("*/seed_*/summary.json"))

    def table(d):
        with open(d / "results.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]
    assert table(tmp_path / "ens") == table(tmp_path / "alone")
    for p in (tmp_path / "ens" / "runs").glob("*/seed_*/metrics.jsonl"):
        assert p.read_text() == (tmp_path / "alone" / p.relative_to(tmp_path / "ens")).read_text()
