"""Extending clamp through its public interface only: a plug-in (recipes/extension/my_ext.py) with a
task whose targets are numbers (its own loss), a value source and a progress measure, plus a model of
one's own (recipes/user_model/tiny_lm.py), all named in a suite's `plugins:` and run through the CLI
on the local pool and on Ray: the same results either way.

Every test that uses the Ray backend lives in this file, so that the test run starts one local Ray
cluster (a test file runs whole in one worker process): ensembles of tests/test_bench.py's suite
and the plug-ins below, a user's model among them, are checked on Ray here."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import registries_restored

from clamp.api import bench as run_suite
from clamp.cli import main
from clamp.recipe.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "recipes" / "extension" / "my_ext.py"
MODEL = ROOT / "recipes" / "user_model" / "tiny_lm.py"

RECIPE = """\
name: running_mean
plugins: [{plugin}]
seeds: [0, 1]
model: {{layers: 1, heads: 2, d_model: 32}}
task: {{name: running_mean}}
measure: [loss, explained]
train: {{steps: 60, batch: 32, lr: 3.0e-3, eval_every: 15, eval_size: 64, checkpoint_every: 30}}
phases:
  explained: {{above: 0.8}}
probes:
  uniform: [{{clamp: "blocks.0.attn.hook_pattern[0]", to: uniform_attention}}]
"""

SUITE = """\
name: extension
plugins: [{model}]
base: recipe.yaml
seeds: [0, 1]
variants:
  learnt: {{}}
  uniform:
    interventions: [{{clamp: "blocks.0.attn.hook_pattern[1]", to: uniform_attention}}]
  own_model:
    model: {{module: "tiny_lm:tiny_lm", layers: 1, heads: 2, d_model: 32, options: {{mlp_ratio: 2}}}}
expect:
  - name: uniform attention explains the targets at least as early
    ratio: [uniform, learnt]
    of: "phase:explained:above"
    below: 1.01
  - name: the learnt model explains most of the variance
    value: learnt
    of: "final:explained"
    above: 0.8
"""


@pytest.fixture(scope="module")
def suites(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("ext")
    (d / "recipe.yaml").write_text(RECIPE.format(plugin=PLUGIN))
    (d / "suite.yaml").write_text(SUITE.format(model=MODEL))
    with registries_restored():                   # the plug-in's names are gone for later test modules
        assert main(["bench", str(d / "suite.yaml"), "--out", str(d / "local")]) == 0
        assert main(["bench", str(d / "suite.yaml"), "--out", str(d / "ray"), "--backend", "ray"]) == 0
        yield d / "local", d / "ray"


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_local_pool_and_ray_give_the_same_results(suites):
    local, ray = suites
    files = sorted(p.relative_to(local) for p in (local / "runs").rglob("metrics.jsonl"))
    assert len(files) == 6
    for f in files:
        assert (local / f).read_bytes() == (ray / f).read_bytes(), f
    with open(local / "results.csv") as a, open(ray / "results.csv") as b:
        ra, rb = list(csv.DictReader(a)), list(csv.DictReader(b))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_s",)} for r in rs]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_the_extensions_columns_rules_and_expectations_work(suites):
    local, _ = suites
    learnt = rows(local / "runs" / "learnt" / "seed_0" / "metrics.jsonl")
    last = learnt[-1]
    assert "explained" in last and "loss@uniform" in last                  # the measure; the source in a probe
    assert not any(k.startswith("accuracy") for k in last)                  # a regression has no accuracy
    assert last["explained"] > 0.8 and last["loss"] < learnt[0]["loss"]
    summary = json.loads((local / "runs" / "learnt" / "seed_0" / "summary.json").read_text())
    assert summary["phases"]["explained"]["above"]["step"] is not None      # the user's measure in a phase rule
    own = rows(local / "runs" / "own_model" / "seed_0" / "metrics.jsonl")
    assert own[-1]["loss"] < own[0]["loss"]                                  # the user's model on the user's task
    report = (local / "report.md").read_text()
    assert report.count("| PASS |") == 2 and "| FAIL |" not in report


def test_other_verbs_read_the_plugins_from_the_run(suites, tmp_path, capsys):
    local, _ = suites
    run = local / "runs" / "learnt" / "seed_0"
    assert main(["report", str(run)]) == 0
    (tmp_path / "later.yaml").write_text("probes:\n  later: [{clamp: blocks.0.attn.hook_pattern[1], "
                                         "to: uniform_attention}]\n")
    assert main(["probe", str(run), str(tmp_path / "later.yaml")]) == 0
    assert "loss@later" in capsys.readouterr().out
    assert main(["plan", str(run / "recipe.yaml")]) == 0
    assert main(["graph", str(local), "--out", str(tmp_path / "graph"), "--behaviour", "explained:above"]) == 0
    graph = json.loads((tmp_path / "graph" / "graph.json").read_text())
    effects = [e for e in graph["edges"] if e["kind"] == "effect" and e["target"] == "phase:explained:above"]
    assert [e["source"] for e in effects] == ["blocks.0.attn.hook_pattern[1]"]   # the user's measure, timed


@pytest.mark.ray
def test_ensembles_on_ray_give_the_runs_results(tmp_path, ray_cluster):
    """tests/test_bench.py's suite (built-in runs that share ensembles: the suite above trains alone,
    its task having a loss of its own) on Ray and on the local pool: the same table and verdicts.
    (A user's model travelling to Ray workers is the suite above's own_model variant.)"""
    from test_bench import SUITE, read_csv, stable, write_suite
    suite = load_suite(write_suite(tmp_path, SUITE.replace("steps: 200", "steps: 40").replace("[0, 1, 2]", "[0, 1]")))
    local = run_suite(suite, tmp_path / "local", workers=2)
    res = run_suite(suite, tmp_path / "ray", backend="ray", workers=2)
    assert stable(read_csv(tmp_path / "ray" / "results.csv")) == stable(read_csv(tmp_path / "local" / "results.csv"))
    assert [v["verdict"] for v in res.verdicts] == [v["verdict"] for v in local.verdicts]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "runs").glob("*/seed_*/summary.json")]
    assert len(summaries) == 4 and all(sm["ensemble"]["members"] == 2 for sm in summaries)
