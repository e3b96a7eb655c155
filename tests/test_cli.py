"""The `clamp` command, run as a user would: exit codes, one-line errors, files written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TINY = """\
name: tiny
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 12, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16}
subcircuits:
  prev_token:
    sites: [blocks.0.attn.hook_pattern[2]]
interventions:
  - clamp: prev_token
    to: previous_token
    steps: [0, 6]
"""


def clamp_cmd(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CLAMP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "clamp.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def clamp_main(*args, cwd, capsys, monkeypatch):
    """The same command in this process (main(argv) is the console script): (code, stdout, stderr)."""
    from clamp.cli import main
    monkeypatch.chdir(cwd)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def test_run_plan_sites(recipe, tmp_path, capsys, monkeypatch):
    r = clamp_cmd("run", recipe, "--out", tmp_path / "out", "--quiet", cwd=tmp_path)    # the console entry point
    assert r.returncode == 0, r.stderr
    assert "loss below" in r.stdout and "wrote" in r.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "ok"
    code, out, _ = clamp_main("plan", recipe, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "clamp to previous_token" in out and "[0, 6)" in out
    code, out, _ = clamp_main("sites", recipe, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "blocks.{L}.attn.hook_pattern" in out and "4 heads" in out


BAD_CLI = [
    (["run", "{recipe}", "--set", "train.lr=fast"], "--set train.lr=fast: train.lr: found 'fast'; expected a number"),
    (["run", "{bad}"], "bad.yaml:9: interventions[0].clamp: found 'prev_tokn'"),
    (["run", "{missing}"], "missing.yaml: found no readable file; expected a recipe file (YAML)"),
    (["plan", "{bad}"], "did you mean 'prev_token'?"),
    (["rnu", "{recipe}"], "did you mean 'run'?"),
    (["discover", "{recipe}", "--graft", "al"], "invalid choice: 'al' (choose from 'missing', 'all', 'none'); "
                                                "did you mean 'all'?"),
    (["discover", "{recipe}", "--ablate", "zeros"], "did you mean 'zero'?"),
]


@pytest.mark.parametrize("args, message", BAD_CLI)
def test_bad_input_exits_2_with_one_line(recipe, tmp_path, args, message, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("- clamp: prev_token", "- clamp: prev_tokn"))
    subs = {"{recipe}": recipe, "{bad}": bad, "{missing}": tmp_path / "missing.yaml"}
    try:
        code, out, err = clamp_main(*[subs.get(a, a) for a in args], cwd=tmp_path, capsys=capsys,
                                    monkeypatch=monkeypatch)
    except SystemExit as e:                               # argparse's own errors exit from parse_args
        code, (out, err) = e.code, capsys.readouterr()
    assert code == 2, (out, err)
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()           # nothing half-written


def test_a_different_recipe_in_an_existing_run_dir_is_refused(recipe, tmp_path, capsys, monkeypatch):
    kw = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    code, out, err = clamp_main("run", recipe, "--out", tmp_path / "o", "--quiet", **kw)
    assert code == 0, (out, err)
    code, _, err = clamp_main("run", recipe, "--out", tmp_path / "o", "--set", "train.lr=0.5", **kw)
    assert code == 2 and "holds a different recipe" in err and "--fresh" in err
    assert clamp_main("run", recipe, "--out", tmp_path / "o", "--set", "train.lr=0.5", "--fresh", "--quiet",
                      **kw)[0] == 0


def test_demo_smoke(tmp_path):
    """The demo suite, shortened: the induction clamp lowers the loss faster than baseline."""
    from clamp.api import bench as run_suite
    from clamp.cli import _builtin
    from clamp.recipe.suite import load_suite
    suite = load_suite(_builtin("demo_suite.yaml"), ["train.steps=100", "train.eval_every=25",
                                                      "train.eval_size=200", "train.checkpoint_every=0"])
    res = run_suite(suite, tmp_path / "demo", workers=2)
    assert all(r["status"] == "ok" for r in res.rows) and len(res.rows) == 4
    loss = {(r["variant"], r["seed"]): r["final:loss"] for r in res.rows}
    for seed in (0, 1):
        assert loss["match_clamped", seed] < loss["baseline", seed] - 0.2
    assert (tmp_path / "demo" / "results.csv").exists() and (tmp_path / "demo" / "report.md").exists()
