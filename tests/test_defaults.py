"""Defaults that work: a recipe that names only its task shows the behaviour the task exists for.

The fast tests check what the defaults are (per task); the slow ones train them as written
(`python -m pytest -m slow tests/test_defaults.py`; benchmarks/RESULTS.md has three seeds each)."""
from __future__ import annotations

import math

import pytest

from clamp.names.yamlio import load_yaml
from clamp.recipe.spec import recipe_from_data


def only_task(name: str):
    data, src = load_yaml(f"task: {{name: {name}}}\n", "defaults.yaml")
    return recipe_from_data(data, src)


def test_the_token_task_defaults_are_the_ones_that_form_induction():
    r = only_task("repeat_tokens")
    assert r.model.embed_std == 1.0 and r.train.steps == 3000 and r.train.eval_size == 256
    assert "induction_score" in r.measure
    assert r.phases["max(induction_score/blocks.*.attn.hook_pattern[*])"] == {"above": 0.5}
    assert r.phases["loss"]["below"] == pytest.approx(0.5 * math.log(64))


def test_the_few_shot_defaults_resolve_the_plateau():
    r = only_task("fewshot")
    assert r.model.embed_std == 0.02 and r.train.lr == 3e-4 and r.train.eval_every == ((0, 25), (1000, 50))
    assert r.task.options.offset == 1.0 and r.task.options.spread == 0.5
    assert r.phases == {"loss": {"below": pytest.approx(0.4 * math.log(2), abs=1e-4), "relative": 0.5}}


def test_explicit_keys_win_over_task_defaults():
    data, src = load_yaml("task: {name: repeat_tokens}\nmodel: {embed_std: 0.5}\ntrain: {steps: 10}\n", "d.yaml")
    r = recipe_from_data(data, src)
    assert r.model.embed_std == 0.5 and r.train.steps == 10 and r.train.eval_size == 256


@pytest.mark.slow
def test_token_task_defaults_form_an_induction_head(tmp_path):
    from clamp.training.runs import run
    res = run(only_task("repeat_tokens"), tmp_path / "tok")
    ph = res.seeds[0].summary["phases"]
    assert ph["max(induction_score/blocks.*.attn.hook_pattern[*])"]["above"]["step"] is not None
    assert ph["loss"]["relative"]["step"] is not None                      # a plateau, then the drop


@pytest.mark.slow
def test_few_shot_defaults_show_the_plateau_and_the_drop(tmp_path):
    from clamp.training.runs import run
    res = run(only_task("fewshot"), tmp_path / "few")
    ph = res.seeds[0].summary["phases"]["loss"]
    assert ph["below"]["step"] is not None and ph["relative"]["step"] is not None
    assert 0.55 < ph["relative"]["plateau"] < 0.85                        # the plateau is at ln 2


def test_the_affine_defaults_are_the_studys_model():
    r = only_task("affine")
    m = r.model
    assert (m.layers, m.heads, m.d_model, m.attn_only, m.pos) == (3, 4, 64, False, "learned")
    assert r.train.steps == 3000 and r.train.batch == 64
    assert r.task.options.modulus == 11 and r.task.options.first_loss == 3
    assert r.phases["loss"]["below"] == pytest.approx(0.5 * math.log(11))
    assert r.phases["position_accuracy/pos2"] == {"above": 0.9}


@pytest.mark.slow
def test_affine_defaults_learn_the_determined_terms(tmp_path):
    from clamp.training.runs import run
    res = run(only_task("affine"), tmp_path / "aff")
    s = res.seeds[0]
    assert s.summary["phases"]["loss"]["below"]["step"] is not None
    assert s.summary["phases"]["position_accuracy/pos2"]["above"]["step"] is not None
    last = s.metrics[-1]
    assert last["loss"] < 0.01 and last["position_accuracy/pos2"] > 0.95
