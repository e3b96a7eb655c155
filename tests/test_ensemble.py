"""Ensembles (clamp/ensemble.py, clamp/stacked.py): many runs trained as one batched model give each
run exactly what it gives alone.

The reference is the ordinary one-run training loop (train.train_seed) on the same recipe and
seed. At one torch thread (the default `train.threads`) the tolerance is zero: metrics.jsonl is
byte-identical and every checkpointed parameter and optimizer moment is bit-equal.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

import clamp
import clamp.training.ensemble
from clamp.models.builtin import build_model
from clamp.models.stacked import MemberSeam, Stack
from clamp.names.yamlio import load_yaml
from clamp.store.rundir import list_checkpoints
from clamp.tasks import TASKS
from clamp.training.ensemble import train_ensemble
from clamp.training.grouping import ensemble_key, groups, make_jobs
from clamp.training.train import train_seed
from clamp.values import ValueSource, register_value

TRAIN = {"steps": 20, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 16}


def _metrics(d: Path) -> str:
    return (Path(d) / "metrics.jsonl").read_text()


def _last_ckpt(d: Path) -> dict:
    return torch.load(list_checkpoints(d)[-1][1], weights_only=True)


def _same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for n in a["model"]:
        assert torch.equal(a["model"][n], b["model"][n]), n
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
        assert torch.equal(sa[i]["step"].expand_as(sb[i]["step"]), sb[i]["step"]) or \
            torch.equal(sb[i]["step"].expand_as(sa[i]["step"]), sa[i]["step"]), i


MODELS = {
    "attn-only rope": ("model: {layers: 2, heads: 4, d_model: 16, attn_only: true, norm: pre, pos: rope}\n"
                       "task: {name: fewshot, classes: 10, labels: 4, dim: 8}"),
    "mlp learned": ("model: {layers: 2, heads: 2, d_model: 16, attn_only: false, norm: pre, pos: learned}\n"
                    "task: {name: repeat_tokens, vocab: 12, segment: 4, length: 12}"),
    "no norm": ("model: {layers: 1, heads: 2, d_model: 8, attn_only: true, norm: none, pos: rope}\n"
                "task: {name: repeat_tokens, vocab: 12, segment: 4, length: 12}"),
}


@pytest.mark.parametrize("which", sorted(MODELS))
def test_stack_forward_and_gradients_equal_each_model_alone(which):
    """The stacked forward of K members equals K forwards of model.py's module, logits and every
    parameter gradient bit for bit; a member's own forward (MemberSeam) equals it too."""
    r = clamp.recipe_from_data(*load_yaml(MODELS[which], "m.yaml"))
    seeds = [0, 1, 2]
    solo = [build_model(r.shape(), s) for s in seeds]
    stack = Stack([build_model(r.shape(), s) for s in seeds])
    batches = [TASKS[r.task.name](r.task.options, s).train_batch(0, 6) for s in seeds]
    logits = stack.forward_batches(batches)                            # [K, batch, pos, n_out]
    targets = torch.stack([b.targets for b in batches])
    K = len(seeds)
    nll = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=-100, reduction="none").view(K, -1)
    (nll.sum(1) / (targets != -100).view(K, -1).sum(1)).sum().backward()
    for k, (m, b) in enumerate(zip(solo, batches)):
        out = m(b.tokens, b.vectors, b.is_vector)
        assert torch.equal(out, logits[k].detach())
        F.cross_entropy(out.flatten(0, 1), b.targets.flatten(), ignore_index=-100).backward()
        for n, p in m.named_parameters():
            assert torch.equal(p.grad, stack.p(n).grad[k]), n
        assert torch.equal(MemberSeam(stack, k).forward(b), out.detach())


def test_adam_on_a_stack_moves_each_member_as_alone():
    """clamp's Adam with `members` on [K, ...] tensors equals K optimizers on the slices, bit for bit,
    also for sizes whose members straddle the vectorised kernel's blocks."""
    from clamp.training.optim import Adam
    g = torch.Generator().manual_seed(0)
    for shape in [(5,), (3, 7), (4, 16, 3)]:
        P = torch.randn(3, *shape, generator=g)
        ps = torch.nn.Parameter(P.clone())
        stacked = Adam([ps], lr=1e-2, weight_decay=0.1, members=True)
        alone = [torch.nn.Parameter(P[k].clone()) for k in range(3)]
        opts = [Adam([a], lr=1e-2, weight_decay=0.1) for a in alone]
        for _ in range(4):
            G = torch.randn(3, *shape, generator=g)
            ps.grad = G.clone()
            stacked.step()
            for k in range(3):
                alone[k].grad = G[k].clone()
                opts[k].step()
        for k in range(3):
            assert torch.equal(ps.detach()[k], alone[k].detach())


class _NanAfter(ValueSource):
    """Test source: the site's value times NaN from step 3 on (the run's loss becomes NaN)."""
    from dataclasses import dataclass as _dc

    @_dc(frozen=True)
    class Options:
        pass

    name, Options, sites = "test_nan_after_3", Options, ("*",)

    def value(self, x, site, ctx):
        return (x * float("nan") if ctx.step >= 3 else x), None


class _ZerosFrom4(_NanAfter):
    """Test source: zeros (no gradient: the model is cut off) from step 4 on, undeclared as detached."""
    name = "test_zeros_from_4"

    def value(self, x, site, ctx):
        return (torch.zeros_like(x).detach() if ctx.step >= 4 else x), None


@pytest.fixture
def nan_source():
    """The test sources registered for one test only (registries are global: other tests list them)."""
    from clamp.values import VALUES
    register_value(_NanAfter)
    register_value(_ZerosFrom4)
    yield
    VALUES.pop(_NanAfter.name, None)
    VALUES.pop(_ZerosFrom4.name, None)


VARIANTS = {
    "plain": "",
    "clamp in a window": "interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction, steps: [4, 14]}]",
    "freeze held": "interventions: [{freeze: blocks.0.attn.W_Q[2], steps: [0, 10]}]",
    "freeze accumulate": "interventions: [{freeze: blocks.1.attn.W_K, steps: [5, 12], optimizer_state: accumulate}]",
    "preserve": "interventions: [{ablate: blocks.0.attn.hook_v[0], preserve: [patterns], steps: [2, 16]}]",
    "whole site replaced": "interventions: [{ablate: blocks.0.attn.hook_v, steps: [0, 8]}]",
    "probe": "probes: {prev: [{clamp: blocks.0.attn.hook_pattern[0], to: previous_token}]}",
}
# A value source whose value is computed, with gradient, from other activations of the same forward
# (previous_token_input reads the embedding): the gradient reaching those activations is a sum of
# three or more terms whose order autograd sets from the graph, which differs between a run alone and
# the stack; equal to float rounding, not bit for bit (test below).
ROUNDING = {"ideal input": "interventions: [{clamp: blocks.0.attn.hook_attn_scores[1], to: previous_token_input}]"}


def _suite_entries(tmp_path, extra=None, seeds=(0, 1)):
    donor = tiny(train={"steps": 8, "batch": 8, "lr": 1e-2, "eval_every": 4, "eval_size": 16})
    train_seed(donor, 0, tmp_path / "donor")
    variants = dict(VARIANTS)
    variants["graft"] = (f"interventions: [{{clamp: blocks.0.hook_resid_post, to: graft, run: {tmp_path / 'donor'},"
                         " steps: [3, 9]}]")
    variants.update(extra or {})
    recipes = {k: tiny(v, train=TRAIN | {"checkpoint_every": 10}) for k, v in variants.items()}
    return [(k, r, s) for k, r in recipes.items() for s in seeds]


@pytest.mark.parametrize("eval_chunk", [512, 16])
def test_members_with_different_interventions_equal_their_runs_alone(tmp_path, eval_chunk, monkeypatch):
    """One ensemble of 18 members (9 variants x 2 seeds: clamp windows, held and accumulating freezes,
    a preserve, a graft, a fully replaced site, a source reading the member's own weights, a probe):
    each member's metrics.jsonl is byte-identical to the same run alone and its last checkpoint
    (parameters, moments, step counts) bit-equal; evaluated all together, or one member at a time."""
    monkeypatch.setattr(clamp.training.ensemble, "EVAL_SEQUENCES", eval_chunk)
    runs = _suite_entries(tmp_path)
    keys = {ensemble_key(r) for _, r, _ in runs}
    assert len(keys) == 1 and None not in keys
    results = train_ensemble([(r, s, tmp_path / f"ens/{k}/{s}", None) for k, r, s in runs])
    assert all(isinstance(x, dict) and x["status"] == "ok" for x in results), results
    assert all(x["ensemble"]["members"] == len(runs) for x in results)
    for k, r, s in runs:
        alone = train_seed(r, s, tmp_path / f"alone/{k}/{s}")
        assert alone["status"] == "ok"
        assert _metrics(tmp_path / f"ens/{k}/{s}") == _metrics(tmp_path / f"alone/{k}/{s}"), k
        _same_state(_last_ckpt(tmp_path / f"ens/{k}/{s}"), _last_ckpt(tmp_path / f"alone/{k}/{s}"))
        for f in ("recipe.yaml", "plan.txt"):
            assert (tmp_path / f"ens/{k}/{s}/{f}").read_text() == (tmp_path / f"alone/{k}/{s}/{f}").read_text()
    probe_cols = [c for c in json.loads(_metrics(tmp_path / "ens/probe/0").splitlines()[-1]) if "@prev" in c]
    assert probe_cols


def test_a_source_reading_other_activations_agrees_to_rounding(tmp_path, monkeypatch):
    """With previous_token_input (its value depends on the member's own embedding and weights), the
    members' metrics agree with their runs alone to 1e-5 relative over 20 steps (the difference is
    the order of a gradient sum), and evaluated one member at a time as all together."""
    monkeypatch.setattr(clamp.training.ensemble, "EVAL_SEQUENCES", 16)
    r = tiny(ROUNDING["ideal input"], train=TRAIN)
    res = train_ensemble([(r, s, tmp_path / f"e{s}", None) for s in (0, 1)] + [(tiny(), 0, tmp_path / "p", None)])
    assert all(x["status"] == "ok" for x in res)
    for s in (0, 1):
        train_seed(r, s, tmp_path / f"a{s}")
        ens = [json.loads(line) for line in _metrics(tmp_path / f"e{s}").splitlines()]
        alone = [json.loads(line) for line in _metrics(tmp_path / f"a{s}").splitlines()]
        assert [x["step"] for x in ens] == [x["step"] for x in alone]
        for x, y in zip(ens, alone):
            for c, v in y.items():
                assert x[c] == pytest.approx(v, rel=1e-5, abs=1e-6), (s, x["step"], c)


def test_a_failing_member_fails_alone_and_the_others_go_on(tmp_path, nan_source):
    """A member whose loss becomes NaN, one whose loss loses its gradient (a window clamping the logits
    whole), and one stopping early on a stop rule leave the ensemble (it is rebuilt without them); the
    failed ones say why in their summary and error.log, as alone."""
    nan = tiny("interventions: [{clamp: hook_logits, to: test_nan_after_3}]")
    frozen_out = tiny("interventions: [{clamp: hook_logits, to: test_zeros_from_4}]")
    stop = tiny(train=TRAIN | {"stop": {"accuracy": {"above": 0.3}}})
    ok = tiny()
    entries = [(nan, 0, tmp_path / "e_nan", None), (stop, 0, tmp_path / "e_stop", None),
               (ok, 0, tmp_path / "e_ok", None), (ok, 1, tmp_path / "e_ok1", None),
               (frozen_out, 0, tmp_path / "e_nograd", None)]
    assert len({ensemble_key(r) for r, *_ in entries}) == 1
    res = train_ensemble(entries)
    assert res[0]["status"] == "failed" and res[0]["error"] == "training loss became nan at step 3"
    assert (tmp_path / "e_nan" / "error.log").exists()
    assert res[1]["status"] == "ok" and res[1]["stopped_early"] and res[1]["steps"] < 20
    assert res[4]["status"] == "failed" and res[4]["error"].startswith("the loss has no gradient at step 4")
    for r, s, d, _ in entries:
        alone = train_seed(r, s, Path(str(d) + "_alone"))
        assert {k: alone[k] for k in ("status", "error", "steps")} == \
            {k: res[entries.index((r, s, d, None))][k] for k in ("status", "error", "steps")}
        assert _metrics(d) == _metrics(Path(str(d) + "_alone"))


def test_resume_is_per_member(tmp_path):
    """An interrupted ensemble resumes each member from its own last checkpoint (members at different
    steps; one already finished), ending where the uninterrupted runs end."""
    a = tiny(train=TRAIN | {"checkpoint_every": 5})
    b = tiny("interventions: [{freeze: blocks.0.attn.W_Q[1], steps: [0, 12]}]", train=TRAIN | {"checkpoint_every": 3})
    short = replace(a, train=replace(a.train, steps=10))
    train_seed(short, 0, tmp_path / "c")                   # finished before the ensemble starts

    def interrupt(ev):
        if ev["event"] == "eval" and ev.get("run") == "b" and ev["step"] == 15:
            raise KeyboardInterrupt
    entries = [(a, 0, tmp_path / "a", "a"), (b, 1, tmp_path / "b", "b"), (short, 0, tmp_path / "c", "c")]
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(entries, progress=interrupt)
    assert json.loads((tmp_path / "a/summary.json").read_text())["status"] == "interrupted"
    res = train_ensemble(entries)
    assert [x["status"] for x in res] == ["ok", "ok", "ok"]
    assert res[0]["resumed_from"] == 10 and res[1]["resumed_from"] == 12 and res[2]["resumed_from"] == 0
    for r, s, d, _ in entries[:2]:
        train_seed(r, s, Path(str(d) + "_alone"))
        assert _metrics(d) == _metrics(Path(str(d) + "_alone"))
        _same_state(_last_ckpt(d), _last_ckpt(Path(str(d) + "_alone")))


def test_grouping():
    """Runs group by shape, task and training settings; foreign models and raw module sites train alone;
    a group splits into one ensemble per worker."""
    a = tiny()
    more_steps = tiny(train=TRAIN | {"steps": 40})
    other_lr = tiny(train=TRAIN | {"lr": 1e-3})
    wider = tiny(model={"layers": 2, "heads": 4, "d_model": 32})
    nnsight = tiny(model={"layers": 2, "heads": 4, "d_model": 16, "backend": "nnsight"})
    raw = tiny("interventions: [{ablate: 'module:blocks.0.attn.hook_z.output'}]")
    assert ensemble_key(a) == ensemble_key(more_steps) != ensemble_key(other_lr)
    assert ensemble_key(wider) != ensemble_key(a)
    assert ensemble_key(nnsight) is None and ensemble_key(raw) is None
    rs = [a, more_steps, other_lr, wider, nnsight, a, a, a]
    g = groups(rs, workers=2)
    assert sorted(sorted(x) for x in g) == sorted([[0, 5, 7], [1, 6], [2], [3], [4]])
    assert sorted(len(x) for x in groups([a] * 10, workers=1, max_members=4)) == [3, 3, 4]
    from clamp.recipe import budget  # members per process: what fits in memory
    est = budget.estimate(a)
    member = est.param_bytes + est.train_bytes + est.task_bytes + est.metrics_bytes
    limit = budget.PROCESS + budget.RUNTIME + est.eval_bytes + 3.5 * member
    assert budget.members_that_fit(a, limit) == 3
    assert sorted(len(x) for x in groups([a] * 10, workers=1, max_memory=limit)) == [2, 2, 3, 3]
    assert len(groups([a] * 10, workers=1, max_memory=float("inf"))) == 1


def test_make_jobs_without_ensembles_is_one_job_per_run():
    a = tiny()
    runs = [(i, a, i, f"/tmp/x{i}", None) for i in range(4)]
    assert len(make_jobs(runs, 2, False, lambda *r: r)) == 4
    jobs = make_jobs(runs, 2, True, lambda *r: r)
    assert len(jobs) == 2 and all(len(j.args[0]) == 2 for j in jobs)


def test_run_with_several_seeds_ensembles_by_default(tmp_path):
    """`clamp.run` trains a recipe's seeds as ensembles; `ensemble=False` trains them alone; same files."""
    r = replace(tiny(), seeds=(0, 1, 2))
    on = clamp.run(r, tmp_path / "on", workers=1)
    off = clamp.run(r, tmp_path / "off", workers=1, ensemble=False)
    for s in (0, 1, 2):
        assert on.seeds[s].summary["ensemble"]["members"] == 3
        assert "ensemble" not in off.seeds[s].summary
        assert _metrics(on.seeds[s].dir) == _metrics(off.seeds[s].dir)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_ensemble_matches_cpu(tmp_path):
    """On a GPU, an ensemble (and a run alone) trains on the device and ends close to the CPU run
    (different kernels: a tolerance, not bit-equality)."""
    r = tiny("interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction}]")
    gpu = replace(r, train=replace(r.train, device="cuda"))
    res = train_ensemble([(gpu, 0, tmp_path / "g0", None), (gpu, 1, tmp_path / "g1", None)])
    assert all(x["status"] == "ok" for x in res)
    cpu = train_seed(r, 0, tmp_path / "c0")
    assert abs(res[0]["final"]["loss"] - cpu["final"]["loss"]) < 1e-3
    state = torch.load(list_checkpoints(tmp_path / "g0")[-1][1], weights_only=True)   # loadable on CPU
    build_model(r.shape(), 0).load_state_dict(state["model"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_where_it_is_written(tmp_path, capsys):
    """`--device cuda` (or train.device: cuda) where no GPU is visible: one located line, exit 2, nothing
    written; `--device auto` trains on the CPU."""
    from clamp.cli import main
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {layers: 1, heads: 2, d_model: 8}\n"
                      "task: {name: fewshot, classes: 10, labels: 4, dim: 8}\n"
                      "train: {steps: 4, batch: 4, eval_every: 2, eval_size: 8, device: cuda}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clamp: error: {recipe}:3: train.device: found 'cuda'; expected a device this machine has")
    assert "\n" not in err and not (tmp_path / "x").exists()
    recipe.write_text(recipe.read_text().replace("device: cuda", "device: cpu"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "y"), "--quiet", "--device", "cuda"]) == 2
    assert "train.device" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["run", str(recipe), "--out", str(tmp_path / "z"), "--quiet", "--device", "auto"]) == 0
    assert "device: auto" in (tmp_path / "z" / "recipe.yaml").read_text()
