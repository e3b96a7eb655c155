"""What a new user meets in the first hour: arguments that do what their usage line says, messages
that say what to do, runs that say what they did, and run directories that say what made them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clamp.cli import main
from clamp.console import Started
from clamp.names.errors import InputError
from clamp.names.yamlio import Source
from clamp.recipe.interventions import parse_windows

TINY = """\
name: tiny
seeds: [0, 1]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 12, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16, checkpoint_every: 4}
interventions:
  - freeze: blocks.1.attn.W_O[3]
    steps: [[0, 25%], [50%, 75%]]
"""


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def clamp(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:                      # argparse's errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_set_takes_several_overrides_as_its_usage_line_says(recipe, capsys):
    code, out, err = clamp(capsys, "plan", recipe, "--set", "train.steps=40", "train.lr=0.5")
    assert code == 0, err
    assert "over 40 steps" in out and "steps [0, 10), [20, 30)" in out        # the percentages follow the run
    code, _, err = clamp(capsys, "plan", "--set", "train.steps=40", recipe)
    assert code == 2 and "write the recipe or directory before --set" in err


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_workers_must_be_a_positive_number(recipe, capsys, bad):
    code, _, err = clamp(capsys, "run", recipe, "--workers", bad)
    assert code == 2 and "expected a whole number of processes, 1 or more" in err
    assert not (recipe.parent / "runs").exists()


def test_a_second_run_says_it_trained_nothing(recipe, tmp_path, capsys):
    assert clamp(capsys, "run", recipe, "--out", tmp_path / "o", "--quiet")[0] == 0
    code, out, _ = clamp(capsys, "run", recipe, "--out", tmp_path / "o", "--quiet")
    assert code == 0 and "nothing trained: all 2 runs had finished before (--fresh trains again)" in out


def test_started_runs_are_counted_and_resumes_named():
    seen = []
    s = Started(seen.append)
    for ev in ({"event": "start", "seed": 0, "step": 0}, {"event": "start", "seed": 1, "step": 400},
               {"event": "eval", "seed": 1, "step": 410}):
        s(ev)
    assert len(seen) == 3                                             # every event still reaches progress
    assert s.note(3) == "1 of 3 runs had finished before and were not trained again; resumed 1 at step 400"
    assert Started(seen.append).note(1) == "nothing trained: the run had finished before (--fresh trains again)"
    fresh = Started(seen.append)
    fresh({"event": "start", "seed": 0, "step": 0})
    assert fresh.note(1) == ""


def test_summary_records_versions_commit_and_the_resolved_device(recipe, tmp_path, capsys):
    import platform

    import torch
    code, _, err = clamp(capsys, "run", recipe, "--out", tmp_path / "o", "--quiet", "--device", "auto",
                         "--set", "seeds=[0]")
    assert code == 0, err
    env = json.loads((tmp_path / "o" / "summary.json").read_text())["environment"]
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")         # auto, resolved
    assert env["clamp"] == __import__("importlib.metadata").metadata.version("clamp")
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        import subprocess
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert env["commit"].split("-")[0] == head.strip()


def test_device_cuda_where_there_is_none_is_blamed_on_the_flag(recipe, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = clamp(capsys, "run", recipe, "--device", "cuda")
    assert code == 2 and err.startswith("clamp: error: --device cuda: train.device: found 'cuda'")


def test_unknown_task_and_missing_plugin_say_what_to_do(recipe, tmp_path, capsys):
    code, _, err = clamp(capsys, "plan", recipe, "--set", "task.name=markov")
    assert code == 2 and "or a plug-in's task (README, Extending clamp)" in err
    code, _, err = clamp(capsys, "plan", recipe, "--plugin", "nothere.py")
    assert code == 2 and "there is no '" in err and "nothere.py" in err


@given(steps=st.integers(1, 10**6), a=st.integers(0, 100), b=st.integers(0, 100))
def test_percent_windows_are_that_share_of_the_run(steps, a, b):
    """'a%' is round(a/100 · steps), the same as writing that step."""
    lo, hi = round(steps * a / 100), round(steps * b / 100)
    try:
        got = parse_windows([f"{a}%", f"{b}%"], ("steps",), Source(), steps)
    except InputError as e:
        assert lo >= hi and "start < end" in str(e)
        return
    assert got == ((lo, hi),) == parse_windows([lo, hi], ("steps",), Source(), steps)


@pytest.mark.parametrize("bad", ["101%", "-5%", "5 %%", "%"])
def test_bad_percentages_are_located_errors(bad):
    with pytest.raises(InputError):
        parse_windows([0, bad], ("steps",), Source(), 100)
