"""Training and run directories: layout, resume equality, failures, measures, phase times."""
from __future__ import annotations

import json
import math

import torch
from conftest import tiny

import clamp
from clamp.measures import induction_strengths, prev_token_scores
from clamp.names.phases import phase_times, relative_crossing, threshold_crossing
from clamp.store.files import read_metrics
from clamp.store.rundir import list_checkpoints
from clamp.training.train import train_seed


def test_run_directory_layout(tmp_path):
    r = tiny(train={"steps": 20, "batch": 8, "eval_every": 5, "eval_size": 16, "checkpoint_every": 10})
    run = clamp.run(r, tmp_path / "run")
    d = tmp_path / "run"
    for f in ("recipe.yaml", "plan.txt", "metrics.jsonl", "summary.json"):
        assert (d / f).is_file()
    assert [s for s, _ in list_checkpoints(d)] == [10, 20]
    rows = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]
    assert all(r["sequences"] == r["step"] * 8 and r["seed"] == 0 for r in rows)
    assert {"loss", "accuracy", "loss/test_relabel", "accuracy/heldout_classes",
            "prev_token_score/blocks.0.attn.hook_pattern[3]",
            "induction_strength/blocks.1.attn.hook_pattern[0]"} <= set(rows[0])
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "ok" and s["final"]["loss"] == rows[-1]["loss"]
    assert "below" in s["phases"]["loss"] and "relative" in s["phases"]["loss"]
    # the resolved recipe loads back to the same recipe
    again = clamp.load_recipe(d / "recipe.yaml")
    assert again.train == r.train and again.interventions == r.interventions
    assert run.seeds[0].metrics == rows


def test_several_seeds_get_subdirectories(tmp_path):
    r = tiny(seeds=[0, 1], train={"steps": 6, "batch": 4, "eval_every": 3, "eval_size": 8})
    run = clamp.run(r, tmp_path / "run", workers=2)
    assert sorted(run.seeds) == [0, 1]
    assert (tmp_path / "run" / "seed_1" / "summary.json").exists()
    top = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(top["seeds"]) == {"0", "1"} and top["status"] == "ok"
    # different seeds, different data and init
    assert run.seeds[0].metrics[0]["loss"] != run.seeds[1].metrics[0]["loss"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    r = tiny("""
interventions:
  - clamp: blocks.0.attn.hook_pattern[1]
    to: previous_token
    steps: [4, 12]
  - freeze: blocks.1.attn.W_O[2]
    steps: [8, 16]
""", train={"steps": 20, "batch": 8, "eval_every": 2, "eval_size": 16, "checkpoint_every": 6})
    full = tmp_path / "full"
    train_seed(r, 0, full)
    part = tmp_path / "part"
    train_seed(r, 0, part)
    # simulate a kill after step 13: drop the summary, later checkpoints and metrics lines
    (part / "summary.json").unlink()
    for s, p in list_checkpoints(part):
        if s > 12:
            p.unlink()
    rows = read_metrics(part / "metrics.jsonl")
    (part / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows[:7]) + '{"step": 14, "lo')
    train_seed(r, 0, part)
    assert read_metrics(part / "metrics.jsonl") == read_metrics(full / "metrics.jsonl")
    a = torch.load(list_checkpoints(full)[-1][1], weights_only=True)["model"]
    b = torch.load(list_checkpoints(part)[-1][1], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_not_trained_again(tmp_path):
    r = tiny(train={"steps": 4, "batch": 4, "eval_every": 2, "eval_size": 8})
    s1 = train_seed(r, 0, tmp_path / "d")
    s2 = train_seed(r, 0, tmp_path / "d")
    assert s1 == s2


def test_a_nan_loss_fails_the_run_with_a_reason(tmp_path):
    r = tiny(train={"steps": 10, "batch": 4, "lr": 1e30, "eval_every": 5, "eval_size": 8})
    s = train_seed(r, 0, tmp_path / "d")
    assert s["status"] == "failed" and "loss became" in s["error"]
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "failed"


def test_measures_on_hand_made_patterns():
    T = 5
    A = torch.zeros(2, 3, T, T)
    A[:, 0] = torch.eye(T)                                     # attends to itself
    for i in range(T):
        A[:, 1, i, max(i - 1, 0)] = 1                          # previous token
    A[:, 2, :, 0] = 1                                          # first position
    assert torch.allclose(prev_token_scores(A), torch.tensor([0.0, 1.0, 0.25]))
    keys = torch.zeros(2, T, T, dtype=torch.bool)
    others = torch.zeros(2, T, T, dtype=torch.bool)
    keys[:, 4, 3] = True
    others[:, 4, 1] = True
    A2 = torch.zeros(2, 1, T, T)
    A2[:, 0, 4, 3], A2[:, 0, 4, 1], A2[:, 0, 4, 4] = 0.7, 0.2, 0.1
    assert torch.allclose(induction_strengths(A2, keys, others), torch.tensor([0.5]))


def test_phase_rules_on_a_synthetic_curve():
    steps = list(range(0, 3000, 25))
    # descent to ln 2 by step 300, plateau until 1500, sharp drop to ~0
    def f(s):
        if s < 300:
            return math.log(5) - (math.log(5) - math.log(2)) * s / 300
        return math.log(2) / (1 + math.exp((s - 1500) / 40))
    vals = [f(s) for s in steps]
    assert threshold_crossing(steps, vals, 0.4 * math.log(2)) == 1525
    rel = relative_crossing(steps, vals, 0.5)
    assert abs(rel["plateau"] - math.log(2)) < 0.02 and rel["step"] in (1500, 1525)
    flat = relative_crossing(steps, [0.7] * len(steps))
    assert flat["step"] is None
    out = phase_times([{"step": s, "loss": v} for s, v in zip(steps, vals)], {"loss": {"below": 0.2773}}, 32)
    assert out["loss"]["below"]["step"] == 1525 and out["loss"]["below"]["sequences"] == 1525 * 32


def test_sparse_evaluators(tmp_path):
    """`train.evaluator_every`: an evaluator runs at multiples of its N and at the first, the last and a
    stopping evaluation; every other evaluator at every evaluation; a run alone and in an ensemble agree."""
    from clamp.training.ensemble import train_ensemble
    r = tiny(train={"steps": 30, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 16,
                    "evaluator_every": {"test_relabel": 10}})
    train_seed(r, 0, tmp_path / "a")
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    have = {row["step"]: "loss/test_relabel" in row for row in rows}
    assert have == {0: True, 5: False, 10: True, 15: False, 20: True, 25: False, 30: True}
    assert all("loss" in row and "loss/heldout_exemplars" in row for row in rows)
    stop = tiny(train={"steps": 30, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 16,
                       "evaluator_every": {"test_relabel": 100}, "stop": {"loss": {"below": 100}}})
    s = train_seed(stop, 0, tmp_path / "s")
    assert s["stopped_early"] and "loss/test_relabel" in s["final"]
    s5 = tiny(train={"steps": 30, "batch": 8, "lr": 1e-2, "eval_every": 5, "eval_size": 16,
                     "evaluator_every": {"test_relabel": 100}, "stop": {"accuracy": {"above": 0.3}}})
    train_ensemble([(r, 1, tmp_path / "e1", None), (s5, 0, tmp_path / "e2", None)])
    train_seed(r, 1, tmp_path / "a1")
    train_seed(s5, 0, tmp_path / "a2")
    for e, a in (("e1", "a1"), ("e2", "a2")):
        assert (tmp_path / e / "metrics.jsonl").read_text() == (tmp_path / a / "metrics.jsonl").read_text()


def test_sparse_evaluator_names_are_checked():
    import pytest
    with pytest.raises(clamp.InputError, match=r"train.evaluator_every.test_relable: found 'test_relable'; expected "
                       r"an evaluator of fewshot.*did you mean 'test_relabel'"):
        tiny(train={"steps": 30, "evaluator_every": {"test_relable": 10}})
    with pytest.raises(clamp.InputError, match=r"evaluator_every.*a positive number of steps"):
        tiny(train={"steps": 30, "evaluator_every": {"test_relabel": 0}})
