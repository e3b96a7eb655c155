"""Recipes: the bad-recipe table (exact one-line messages), --set overrides, round trips."""
from __future__ import annotations

import os
import re

import pytest
from fuzzing import mutate
from hypothesis import given, settings
from hypothesis import strategies as st

import clamp
from clamp.names.errors import InputError
from clamp.names.yamlio import dump_yaml, load_yaml
from clamp.recipe.compile import compile_plan
from clamp.recipe.spec import recipe_from_data
from clamp.recipe.types import recipe_to_dict

HEAD = """\
name: t
train: {steps: 1000, lr: 1.0e-3}
subcircuits:
  prev_token:
    sites: [blocks.0.attn.hook_pattern[2]]
    params: [blocks.0.attn.W_Q[2], blocks.0.attn.W_K[2]]
"""

# (recipe text after HEAD, the exact message)
BAD = [
    ("modle: {layers: 2}\n",
     "t.yaml:7: modle: found unknown key 'modle'; expected one of name, seeds, plugins, model, task, train, "
     "subcircuits, interventions, measure, phases, probes; did you mean 'model'?"),
    ("task: {name: fewshoot}\n",
     "t.yaml:7: task.name: found 'fewshoot'; expected a task: one of affine, fewshot, repeat_tokens; "
     "did you mean 'fewshot'?"),
    ("task: {name: fewshot, clases: 10}\n",
     "t.yaml:7: task.clases: found unknown key 'clases'; expected one of classes, labels, pairs, dim, burstiness, "
     "distractors, heldout_label_sets, noise, heldout_exemplars, heldout_noise, heldout_classes, offset, spread, "
     "zipf, seed; did you mean 'classes'?"),
    ("task: {name: fewshot, labels: 1}\n",
     "t.yaml:7: task.labels: found 1; expected at least 2 (one distinct label per class in context)"),
    ("model: {heads: many}\n", "t.yaml:7: model.heads: found 'many'; expected an integer"),
    ("interventions:\n  - clamp: prev_tokn\n    to: previous_token\n",
     "t.yaml:8: interventions[0].clamp: found 'prev_tokn'; expected a subcircuit name (prev_token) or a site name; "
     "did you mean 'prev_token'?"),
    ("interventions:\n  - clamp: blocks.1.attn.hook_patern[3]\n    to: induction\n",
     "t.yaml:8: interventions[0].clamp: found 'blocks.1.attn.hook_patern[3]'; expected an activation site of this "
     "model (`clamp sites RECIPE` lists them); did you mean 'blocks.1.attn.hook_pattern'?"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_tokn\n",
     "t.yaml:9: interventions[0].to: found 'previous_tokn'; expected a value source: one of constant, "
     "disallow_previous_token, embedding, graft, induction, match, mean, perfect_copy, previous_token, "
     "previous_token_input, resample, zero; did you mean 'previous_token'?"),
    ("interventions:\n  - clamp: blocks.1.attn.hook_z[3]\n    to: previous_token\n",
     "t.yaml:8: interventions[0].clamp: found 'blocks.1.attn.hook_z[3]'; expected a site previous_token applies "
     "to (*.hook_pattern)"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n    strenght: 0.9\n",
     "t.yaml:10: interventions[0].strenght: found unknown key 'strenght'; expected one of lag, name, preserve, rows, "
     "steps, strength, to (options of previous_token: lag, rows, strength); did you mean 'strength'?"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n    strength: 1.5\n",
     "t.yaml:10: interventions[0].strength: found 1.5; expected a number in [0.0, 1.0]"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n    steps: [500, 100]\n",
     "t.yaml:10: interventions[0].steps: found [500, 100]; expected start < end (windows are half-open "
     "[start, end))"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n    steps: [0, 5000]\n",
     "t.yaml:10: interventions[0].steps: found [0, 5000]; expected a window inside the run's 1000 steps; "
     "write [0, end] to run to the last step"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n    steps: [0, ned]\n",
     "t.yaml:10: interventions[0].steps[1]: found 'ned'; expected a step (an integer >= 0), 'end', "
     "or a percentage of the run like '40%'; did you mean 'end'?"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n    steps: [[0, 300], [200, 400]]\n",
     "t.yaml:10: interventions[0].steps: found [[0, 300], [200, 400]]; expected windows that do not overlap; "
     "merge [0, 300] and [200, 400] into [0, 400]"),
    ("interventions:\n  - ablate: blocks.1.attn.hook_z[9]\n",
     "t.yaml:8: interventions[0].ablate: found 'blocks.1.attn.hook_z[9]'; expected heads 0..7 (the model has 8 "
     "heads per layer)"),
    ("interventions:\n  - ablate: blocks.2.attn.hook_z[1]\n",
     "t.yaml:8: interventions[0].ablate: found 'blocks.2.attn.hook_z[1]'; expected a layer 0..1 (the model has 2 "
     "layers); layers are 0-based"),
    ("interventions:\n  - ablate: blocks.1.attn.hook_z[1]\n    how: median\n",
     "t.yaml:9: interventions[0].how: found 'median'; expected an ablation: one of mean, resample, zero; "
     "did you mean 'mean'?"),
    ("interventions:\n  - freeze: blocks.1.attn.hook_z[1]\n",
     "t.yaml:8: interventions[0].freeze: found 'blocks.1.attn.hook_z[1]'; expected a parameter of this model "
     "(`clamp sites RECIPE` lists them); blocks.1.attn.hook_z[1] is an activation; freeze takes parameters, "
     "e.g. blocks.0.attn.W_Q[0]"),
    ("interventions:\n  - freeze: prev_token\n    clamp: prev_token\n",
     "t.yaml:8: interventions[0]: found both clamp and freeze; expected exactly one of clamp, ablate, freeze"),
    ("interventions:\n  - clmap: prev_token\n",
     "t.yaml:8: interventions[0]: found no clamp/ablate/freeze key; expected exactly one of clamp, ablate, freeze; "
     "did you mean 'clamp'?"),
    ("train: {steps: 10, lr: -1}\n",
     "t.yaml:2: train.lr: found -1; expected a number > 0"),
    ("seeds: [0, 1, 1]\n", "t.yaml:7: seeds: found [0, 1, 1]; expected each seed once"),
    ("measure: [loss, induction_strenght]\n",
     "t.yaml:7: measure[1]: found 'induction_strenght'; expected a measure: one of accuracy, composition, "
     "copying_score, induction_score, induction_strength, label_prev_token_score, loss, negative_similarity, "
     "position_accuracy, prev_token_score; did you mean 'induction_strength'?"),
    ("phases: {loss: {belo: 0.3}}\n",
     "t.yaml:7: phases.loss.belo: found unknown rule 'belo'; expected one of below, above, relative, band, logistic, max_slope; "  # noqa: E501
     "did you mean 'below'?"),
    ("interventions:\n  - clamp: prev_token\n    to: previous_token\n"
     "  - clamp: blocks.0.attn.hook_pattern[1:4]\n    to: zero\n    steps: [500, end]\n",
     "t.yaml:10: interventions[1]: found a second write to blocks.0.attn.hook_pattern[2] during steps [500, 1000); "
     "expected at most one clamp or ablation per site and head at any step; interventions[0] already writes it "
     "there; give them disjoint steps or heads"),
    ("model: {layers: 2\n", "t.yaml:8: found text that is not valid YAML; expected a YAML mapping; "
     "expected ',' or '}', but got '<stream end>'"),
]


def load(text: str) -> clamp.Recipe:
    data, src = load_yaml(text, "t.yaml")
    r = recipe_from_data(data, src)
    compile_plan(r)
    return r


@pytest.mark.parametrize("body, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_recipe_table(body, message):
    text = HEAD.replace("train: {steps: 1000, lr: 1.0e-3}\n", body) if body.startswith("train:") else HEAD + body
    with pytest.raises(InputError) as e:
        load(text)
    # exact, except that a list of choices ("one of a, b, c") may have grown: a new measure or source
    # must not break the table
    lists = re.compile(r"one of ([^;]+?)(?=;|$)")
    got = str(e.value)
    assert lists.sub("one of …", got) == lists.sub("one of …", message)
    for want, have in zip(lists.findall(message), lists.findall(got)):
        if "..." not in have:                               # a long line is shortened in its middle
            assert set(want.split(", ")) <= set(have.split(", ")), (want, have)
    assert "\n" not in got


def test_the_same_recipe_without_the_mistake_loads():
    r = load(HEAD + "interventions:\n  - clamp: prev_token\n    to: previous_token\n    steps: [0, end]\n")
    assert r.interventions[0].windows == ((0, 1000),)


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "--set train.lr=abc: train.lr: found 'abc'; expected a number"),
    ("train.stpes=5", "--set train.stpes=5: train.stpes: found unknown key 'stpes'; expected one of steps, batch, "
     "optimizer, lr, weight_decay, betas, eval_every, eval_size, evaluators, evaluator_every, checkpoint_every, "
     "probe_every, stop, threads, device, compile; did you mean 'steps'?"),
    ("task.labels=10", None),
    ("model.heads=4", None),
    ("nonsense", "--set: found 'nonsense'; expected key.path=value, e.g. --set train.lr=1e-3"),
])
def test_overrides_are_checked_the_same_way(tmp_path, override, message):
    p = tmp_path / "r.yaml"
    p.write_text(HEAD)
    if message is None:
        r = clamp.load_recipe(p, [override])
        key, value = override.split("=")
        section, field = key.split(".")
        assert getattr(getattr(r, section) if section != "task" else r.task.options, field) == int(value)
    else:
        with pytest.raises(InputError) as e:
            clamp.load_recipe(p, [override])
        assert str(e.value) == message


def test_bracketed_sites_parse_inside_flow_lists():
    r = load(HEAD)
    assert r.subcircuits["prev_token"].sites == ("blocks.0.attn.hook_pattern[2]",)


def test_site_quoting_touches_whole_tokens_only():
    from clamp.names.yamlio import quote_site_names as q
    assert q("a: [blocks.0.attn.hook_z[1], x]") == "a: ['blocks.0.attn.hook_z[1]', x]"
    assert q("- clamp: blocks.1.attn.hook_z[0,1]  # c[1]") == "- clamp: 'blocks.1.attn.hook_z[0,1]'  # c[1]"
    for same in ("of: final:max(induction/blocks.1.attn.hook_pattern[*])", "a: 'blocks.0.x[1]'",
                 'a: "b.c[2]"', "a: x/blocks.0.attn.hook_z[1]"):
        assert q(same) == same


def test_yaml_1e4_is_a_number():
    r = load(HEAD.replace("lr: 1.0e-3", "lr: 1e-4"))
    assert r.train.lr == 1e-4


# -- round trips ---------------------------------------------------------------------------

windows = st.lists(st.integers(0, 999), min_size=2, max_size=6, unique=True).map(sorted).map(
    lambda xs: [[xs[i], xs[i + 1]] for i in range(0, len(xs) - 1, 2)])
interventions = st.lists(st.one_of(
    st.builds(lambda h, w, s: {"clamp": f"blocks.0.attn.hook_pattern[{h}]", "to": "previous_token",
                               "strength": s, "steps": w},
              st.integers(0, 3), windows, st.floats(0, 1)),
    st.builds(lambda h, w, how: {"ablate": f"blocks.1.attn.hook_z[{h}]", "how": how, "steps": w},
              st.integers(4, 7), windows, st.sampled_from(["zero", "mean", "resample"])),
    st.builds(lambda w: {"freeze": "prev_token", "steps": w}, windows),
), max_size=3)


@settings(max_examples=60, deadline=None)
@given(interventions=interventions, steps=st.integers(1000, 5000), lr=st.floats(1e-5, 1e-1),
       labels=st.integers(3, 9), heads=st.sampled_from([4, 8]), seeds=st.lists(st.integers(0, 99), min_size=1,
                                                                           max_size=4, unique=True))
def test_recipe_round_trip(interventions, steps, lr, labels, heads, seeds):
    data = {"name": "rt", "seeds": seeds, "model": {"heads": heads},
            "task": {"name": "fewshot", "labels": labels}, "train": {"steps": steps, "lr": lr},
            "subcircuits": {"prev_token": {"sites": ["blocks.0.attn.hook_pattern[2]"],
                                           "params": ["blocks.0.attn.W_Q[2]"]}},
            "interventions": [iv for iv in interventions if "ablate" not in iv or heads == 8]}
    r = recipe_from_data(data)
    text = dump_yaml(recipe_to_dict(r))
    again = recipe_from_data(*load_yaml(text, "x.yaml"))
    assert again == r
    assert dump_yaml(recipe_to_dict(again)) == text


VALID = HEAD + """\
model: {layers: 2, heads: 8}
task: {name: fewshot, labels: 5}
interventions:
  - clamp: prev_token
    to: previous_token
    strength: 0.9
    steps: [0, 500]
  - freeze: prev_token
    steps: [500, end]
phases: {loss: {below: 0.2773}}
"""

@settings(max_examples=int(os.environ.get("CLAMP_FUZZ_EXAMPLES", 150)), deadline=None,
          derandomize="CLAMP_FUZZ_EXAMPLES" not in os.environ)   # fixed in CI; set it to explore
@given(data=st.data())
def test_loader_fuzz_gives_a_recipe_or_one_input_error(data):
    """Any value anywhere in a valid recipe (or an extra key) either loads and compiles or gives an
    InputError naming the file and a line, never another exception."""
    base, _ = load_yaml(VALID, "t.yaml")
    mutate(base, data)
    text = dump_yaml(base)
    try:
        load(text)
    except InputError as e:
        msg = str(e)
        assert msg.startswith("t.yaml:") and "\n" not in msg, msg


@given(where=st.text(min_size=1, max_size=100), path=st.text(max_size=40), found=st.text(max_size=500),
       expected=st.text(max_size=500), hint=st.text(max_size=500))
def test_an_error_line_is_bounded_and_keeps_its_location(where, path, found, expected, hint):
    where = where.replace("\n", " ") + ":1"
    line = str(InputError(where, path, found, expected, hint))
    assert len(line) <= 300 and "\n" not in line
    # the location is shortened only after every other part was, so one of up to 100 characters never is
    if all(c.isprintable() for c in where):
        assert line.startswith(where + ": ")
