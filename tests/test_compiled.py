"""`train.compile`: the compiled step against the eager step on every intervention kind, alone and in an
ensemble; one compilation per configuration of active interventions; eager where compilation fails.

Tolerance: compiled and eager compute the same operations in different orders (fused kernels, the
real form of RoPE), so losses agree to 1e-5 relative and parameters to 1e-5 absolute over a short
run; a freeze is still bit-exact (its slice is written back after every optimizer step).

The default run compiles with the `aot_eager` backend (torch.compile's graph capture and its
autograd graphs: where clamp's hooks are traced, without generating code, which costs ~20 s of CPU
per process on a 2-core machine, ~40 s from a cold cache); `pytest -m slow` runs every case with
inductor, clamp's default backend."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny
from torch._dynamo.utils import counters

import clamp.training.compiled as compiled
from clamp.training.ensemble import train_ensemble
from clamp.training.train import Trainer, train_seed

TRAIN = {"steps": 12, "batch": 8, "lr": 1e-2, "eval_every": 6, "eval_size": 16}
KINDS = {
    "none": "",
    "clamp": "interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction}]",
    "ablate": "interventions: [{ablate: blocks.0.attn.hook_z[0,2], how: mean}]",
    "freeze": "interventions: [{freeze: blocks.0.attn.W_Q[2]}]",
    "preserve": "interventions: [{ablate: blocks.0.attn.hook_v[1], preserve: [patterns]}]",
}


def steps(recipe, compile_: bool, n: int = 12):
    tr = Trainer(recipe_with(recipe, compile_), 0)
    losses = [tr.train_step() for _ in range(n)]
    return losses, {k: v.detach().clone() for k, v in tr.model.state_dict().items()}, tr


def recipe_with(recipe, compile_: bool):
    from dataclasses import replace
    return replace(recipe, train=replace(recipe.train, compile=compile_))


def close(a, b):
    (la, sa), (lb, sb) = a[:2], b[:2]
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-5, atol=1e-6)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=k)


@pytest.fixture(autouse=True)
def backend(request, monkeypatch):
    """aot_eager unless the test asks for inductor (clamp's default backend)."""
    name = getattr(request, "param", "aot_eager")
    monkeypatch.setattr(compiled, "BACKEND", name)
    return name


INDUCTOR = pytest.param("inductor", marks=pytest.mark.slow)


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    d = tmp_path_factory.mktemp("donor")
    train_seed(tiny(train=TRAIN | {"steps": 6}), 0, d / "run")
    return d / "run"


CASES = [(k, "aot_eager") for k in [*KINDS, "graft"]] + \
    [pytest.param(k, "inductor", marks=pytest.mark.slow) for k in [*KINDS, "graft"]]


@pytest.mark.parametrize("kind, backend", CASES, indirect=["backend"])
def test_each_intervention_kind_compiled_equals_eager(kind, donor, backend):
    text = KINDS.get(kind) or f"interventions: [{{clamp: blocks.0.hook_resid_post, to: graft, run: {donor}}}]"
    r = tiny(text, train=TRAIN)
    eager, comp = steps(r, False), steps(r, True)
    close(eager, comp)
    assert comp[2].compile_summary() == {"enabled": True, "eager_fallback": None}
    a, b = eager[2].evaluate(probes=False), comp[2].evaluate(probes=False)     # evaluation compiled too
    assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5) for k in a), (a, b)
    if kind == "freeze":                     # bit-exact under compile too: the slice never moved
        init = Trainer(r, 0).model.state_dict()["blocks.0.attn.W_Q"]
        assert torch.equal(comp[1]["blocks.0.attn.W_Q"][2], init[2])
        assert not torch.equal(comp[1]["blocks.0.attn.W_Q"][1], init[1])


def test_each_configuration_compiles_once():
    """A clamp on in [3, 6) and again in [9, 12): two configurations (none, the clamp), two graphs; a
    configuration that comes back reuses its graph."""
    torch._dynamo.reset()
    counters.clear()
    r = tiny("interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction, steps: [[3, 6], [9, 12]]}]",
             train=TRAIN)
    eager, comp = steps(r, False), steps(r, True)
    close(eager, comp)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]


@pytest.mark.parametrize("backend", ["aot_eager", INDUCTOR], indirect=True)
def test_an_ensemble_compiled_equals_its_runs_alone_eager(tmp_path, backend):
    """Members with a clamp window, a held freeze and a preserve, trained as one compiled ensemble:
    each member's metrics agree with the same run alone and eager."""
    variants = {"clamp": "interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction, steps: [4, 8]}]",
                "freeze": "interventions: [{freeze: blocks.0.attn.W_Q[2], steps: [0, 6]}]",
                "preserve": KINDS["preserve"]}
    runs = [(k, tiny(v, train=TRAIN), s) for k, v in variants.items() for s in (0, 1)]
    got = train_ensemble([(recipe_with(r, True), s, tmp_path / f"ens/{k}/{s}", None) for k, r, s in runs])
    assert all(x["status"] == "ok" and x["ensemble"]["members"] == 6 for x in got), got
    assert all(x["compile"] == {"enabled": True, "eager_fallback": None} for x in got)
    for k, r, s in runs:
        assert train_seed(r, s, tmp_path / f"alone/{k}/{s}")["status"] == "ok"
        a, b = (_rows(tmp_path / f"{w}/{k}/{s}") for w in ("ens", "alone"))
        assert [x["step"] for x in a] == [x["step"] for x in b]
        for x, y in zip(a, b):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), (k, s, x["step"])


def _rows(d):
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_a_compiler_failure_runs_eagerly_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compiled, "BACKEND", _failing_backend)
    r = tiny(KINDS["clamp"], train=TRAIN)
    eager, comp = steps(r, False), steps(r, True)
    assert eager[0] == comp[0]                           # eager from the first call: bit for bit
    note = comp[2].compile_summary()["eager_fallback"]
    assert note.startswith("the training step runs eagerly: torch.compile failed") and "no C++ compiler" in note
    from clamp.cli import main
    (tmp_path / "r.yaml").write_text(
        "name: r\nmodel: {layers: 2, heads: 4, d_model: 16}\ntask: {name: fewshot, classes: 10, labels: 4, dim: 8}\n"
        "train: {steps: 4, batch: 8, eval_every: 2, eval_size: 16, compile: true}\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "runs eagerly: torch.compile failed" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and "no C++ compiler" in summary["compile"]["eager_fallback"]


def test_a_runs_own_error_is_not_taken_for_the_compilers():
    """`induction` on a task without induction keys fails eagerly too: the run's error, not a fallback."""
    r = tiny("interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction}]", train=TRAIN)
    from dataclasses import replace
    r = replace(r, train=replace(r.train, compile=True))
    tr = Trainer(r, 0)
    batch = tr.batch()
    bad = replace(batch, induction_keys=None)
    with pytest.raises(Exception, match="induction"):
        tr.train_step(bad)
    assert tr.compile_summary()["eager_fallback"] is None


def test_a_backward_the_compiler_cannot_build_runs_that_step_again_eagerly(monkeypatch):
    """torch compiles the backward at the first backward pass: where that fails, the step is redone
    eagerly and the run goes on eagerly, its parameters bit-equal to an eager run's."""
    from torch._dynamo.backends.common import aot_autograd

    def no_backward(gm, example_inputs):
        raise RuntimeError("no backward kernels")
    monkeypatch.setattr(compiled, "BACKEND", aot_autograd(fw_compiler=lambda gm, ex: gm, bw_compiler=no_backward))
    r = tiny(KINDS["clamp"], train=TRAIN)
    eager, comp = steps(r, False, 4), steps(r, True, 4)
    assert all(torch.equal(eager[1][k], comp[1][k]) for k in eager[1])
    assert "no backward kernels" in comp[2].compile_summary()["eager_fallback"]
