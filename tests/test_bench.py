"""Suites: results checked against the runs' own metrics files, Ray = local, kill and resume, failures."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fuzzing import mutate
from hypothesis import given, settings
from hypothesis import strategies as st

from clamp.analysis.results import load_results
from clamp.api import bench as run_suite
from clamp.cli import main
from clamp.names.errors import InputError
from clamp.names.yamlio import dump_yaml, load_yaml
from clamp.recipe.suite import load_suite, suite_from_data
from clamp.training.train import read_metrics

SUITE = """\
name: small
base:
  model: {layers: 2, heads: 4, d_model: 32}
  task: {name: fewshot, classes: 10, labels: 4, dim: 8}
  train: {steps: 200, batch: 16, lr: 1.0e-2, eval_every: 20, eval_size: 64, checkpoint_every: 50, evaluators: [train]}
  measure: [loss, accuracy, induction_strength]
seeds: [0, 1, 2]
variants:
  baseline: {}
  match:
    interventions: [{clamp: blocks.1.attn.hook_pattern[1], to: induction}]
expect:
  - name: match is faster
    ratio: [match, baseline]
    of: crossing
    below: 0.5
  - name: final loss difference
    difference: [match, baseline]
    of: final:loss
    below: 0.05
"""
THRESHOLD = 0.4 * math.log(2)
VOLATILE = ("wall_s", "resumed_from")


def write_suite(tmp_path: Path, text: str = SUITE) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return p


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    suite = load_suite(write_suite(tmp))
    return run_suite(suite, tmp / "out", workers=2)


def test_results_match_the_runs_own_metrics(local_result):
    out = local_result.dir
    rows = read_csv(out / "results.csv")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    by = {}
    for r in rows:
        metrics = read_metrics(out / "runs" / r["run"] / f"seed_{r['seed']}" / "metrics.jsonl")
        crossing = next((m["step"] for m in metrics if m["loss"] < THRESHOLD), None)
        got = r["crossing:loss:below"]
        assert (got == "" and crossing is None) or int(got) == crossing
        assert float(r["final:loss"]) == pytest.approx(metrics[-1]["loss"], rel=1e-12)
        by[r["variant"], int(r["seed"])] = (crossing, metrics[-1]["loss"])
    # expectation 1, recomputed by hand: per-seed ratio of crossings (never = run length), median
    ratios = [(by["match", s][0] or 200) / (by["baseline", s][0] or 200) for s in (0, 1, 2)]
    v = local_result.verdicts[0]
    assert v["median"] == pytest.approx(statistics.median(ratios))
    assert v["verdict"] == ("PASS" if statistics.median(ratios) < 0.5 else "FAIL")
    diffs = [by["match", s][1] - by["baseline", s][1] for s in (0, 1, 2)]
    v2 = local_result.verdicts[1]
    assert v2["median"] == pytest.approx(statistics.median(diffs))
    assert [p["value"] for p in v2["per_seed"]] == pytest.approx(diffs)
    report = (out / "report.md").read_text()
    assert "match is faster" in report and v["verdict"] in report and "Phase-change times" in report


def test_load_results_rebuilds_the_same_table(local_result):
    again = load_results(local_result.dir)
    assert stable(again.rows) == stable(local_result.rows)
    assert [v["median"] for v in again.verdicts] == [v["median"] for v in local_result.verdicts]


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_killed_suite_resumes_without_redoing_finished_runs(tmp_path, ensemble):
    """Killed (SIGKILL) mid-suite, a suite resumes: finished runs are not trained again, partial ones
    resume from their checkpoints; with ensembles, every member of the killed ensemble resumes."""
    text = (SUITE.replace("steps: 200", "steps: 100").replace("checkpoint_every: 50", "checkpoint_every: 20")
            .replace("seeds: [0, 1, 2]", "seeds: [0, 1]"))
    if ensemble:                                # one run ends early: finished while the others go on
        text = text.replace("variants:\n", "variants:\n  short: {train.steps: 40}\n")
    path = write_suite(tmp_path, text)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clamp.cli", "bench", str(path), "--out", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd + ([] if ensemble else ["--no-ensemble"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:          # wait for one finished run and a checkpoint in the next
            done = list(out.glob("runs/*/seed_*/summary.json"))
            ckpt = [p for p in out.glob("runs/*/seed_*/checkpoints/step_*.pt")
                    if not (p.parent.parent / "summary.json").exists() and p.stat().st_size > 0
                    and int(p.stem.split("_")[1]) >= 40]
            if done and ckpt:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the suite never got going")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p: p.read_text() for p in out.glob("runs/*/seed_*/summary.json")}
    partial = [p.parent.parent for p in out.glob("runs/*/seed_*/checkpoints/step_*.pt")
               if not (p.parent.parent / "summary.json").exists()]
    assert finished and partial
    assert main(cmd[3:]) in (0, 1)                         # resumed (here: no second interpreter to start)
    for p, text_before in finished.items():               # not trained again
        assert p.read_text() == text_before
    for d in set(partial):                                  # resumed from a checkpoint, not from scratch
        assert json.loads((d / "summary.json").read_text())["resumed_from"] > 0
    clean = tmp_path / "clean"
    run_suite(load_suite(path), clean, workers=2)
    assert stable(read_csv(out / "results.csv")) == stable(read_csv(clean / "results.csv"))


def test_a_failing_variant_is_reported_and_the_others_complete(tmp_path):
    text = SUITE.replace("steps: 200", "steps: 40") + "  # \n"
    text = text.replace("variants:\n", "variants:\n  exploding: {train.lr: 1.0e+30}\n")
    res = run_suite(load_suite(write_suite(tmp_path, text)), tmp_path / "out", workers=2)
    status = {(r["variant"], r["seed"]): r for r in res.rows}
    assert all(status["exploding", s]["status"] == "failed" for s in (0, 1, 2))
    assert all("loss became" in status["exploding", s]["error"] for s in (0, 1, 2))
    assert all(status[v, s]["status"] == "ok" for v in ("baseline", "match") for s in (0, 1, 2))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Runs that did not finish" in report and "loss became" in report
    assert not res.ok()


@pytest.mark.parametrize("patch, message", [
    (("seeds: [0, 1, 2]", "seeds: [0, 1, 2]\nvariantz: {}"),
     "suite.yaml:8: variantz: found unknown key 'variantz'; expected one of name, plugins, base, seeds, variants, grid, set, expect; "  # noqa: E501
     "did you mean 'variants'?"),
    (("  baseline: {}", "  baseline: {train.stpes: 10}"),
     "suite.yaml:9: variants.baseline: train.stpes: found unknown key 'stpes'"),
    (("ratio: [match, baseline]", "ratio: [mach, baseline]"),
     "suite.yaml:14: expect[0].ratio[0]: found 'mach'; expected a variant of this suite: baseline, match; "
     "did you mean 'match'?"),
    (("of: crossing", "of: crosing"),
     "suite.yaml:15: expect[0].of: found 'crosing'; expected crossing, phase:<column>:<rule>[:<field>], "
     "final:<column>, or at:<step>:<column> (a column may be max(<glob>), min(<glob>) or mean(<glob>))"),
])
def test_bad_suites_get_located_one_line_errors(tmp_path, patch, message):
    text = SUITE.replace(*patch)
    with pytest.raises(InputError) as e:
        load_suite(write_suite(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)
    r = subprocess.run([sys.executable, "-m", "clamp.cli", "bench", str(tmp_path / "suite.yaml"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_grid_runs_every_variant_at_every_point(tmp_path):
    text = SUITE.replace("steps: 200", "steps: 10").replace("seeds: [0, 1, 2]", "seeds: [0]") + \
        "grid: {task.labels: [3, 4]}\n"
    suite = load_suite(write_suite(tmp_path, text))
    runs = suite.runs()
    assert sorted((r.variant, r.grid) for r in runs) == [
        ("baseline", (("task.labels", 3),)), ("baseline", (("task.labels", 4),)),
        ("match", (("task.labels", 3),)), ("match", (("task.labels", 4),))]
    assert {r.recipe.task.options.labels for r in runs} == {3, 4}


@settings(max_examples=int(os.environ.get("CLAMP_FUZZ_EXAMPLES", 150)), deadline=None,
          derandomize="CLAMP_FUZZ_EXAMPLES" not in os.environ)   # fixed in CI; set it to explore
@given(data=st.data())
def test_suite_loader_fuzz_gives_a_suite_or_one_input_error(data):
    """Any value anywhere in a valid suite file (or an extra key) either loads, with every run's
    recipe built, or gives an InputError naming the file and a line, never another exception."""
    doc, _ = load_yaml(SUITE, "suite.yaml")
    text = dump_yaml(mutate(doc, data))
    try:
        data_, src = load_yaml(text, "suite.yaml")
        suite_from_data(data_, src).runs()
    except InputError as e:
        assert str(e).startswith("suite.yaml:") and "\n" not in str(e), str(e)


def test_a_suite_with_and_without_ensembles_gives_the_same_table(local_result, tmp_path):
    """The same suite trained as ensembles (the default) and run by run: results.csv identical but for
    wall times, the same verdicts; every run's summary says which way it trained."""
    alone = run_suite(load_suite(write_suite(tmp_path)), tmp_path / "alone", workers=2, ensemble=False)
    assert stable(read_csv(alone.dir / "results.csv")) == stable(read_csv(local_result.dir / "results.csv"))
    assert [v["verdict"] for v in alone.verdicts] == [v["verdict"] for v in local_result.verdicts]
    assert all("ensemble" not in json.loads(p.read_text()) for p in (alone.dir / "runs").glob("*/seed_*/summary.json"))
    assert all(json.loads(p.read_text())["ensemble"]["members"] == 3
               for p in (local_result.dir / "runs").glob("*/seed_*/summary.json"))


DOTTED = """\
name: dotted
base:
  model: {layers: 2, heads: 2, d_model: 16}
  task: {name: fewshot, classes: 10, labels: 4, dim: 8}
  train: {steps: 20, batch: 8, eval_every: 10, eval_size: 16}
  measure: [loss, prev_token_score]
  phases: {loss: {below: 0.5}}
seeds: [0]
variants:
  base: {}
  aggregate:
    phases:
      "max(prev_token_score/blocks.0.attn.hook_pattern[*])": {RULE: 0.3}
    train:
      stop: {"max(prev_token_score/blocks.1.attn.hook_pattern[*])": {above: 0.99}}
"""


def test_variant_keys_inside_phases_and_stop_are_column_names_dots_and_all(tmp_path):
    s = suite_from_data(*load_yaml(DOTTED.replace("RULE", "above"), str(tmp_path / "s.yaml")))
    r = s.recipes[("aggregate", ())]
    assert r.phases["max(prev_token_score/blocks.0.attn.hook_pattern[*])"] == {"above": 0.3}
    assert r.phases["loss"] == {"below": 0.5}
    assert r.train.stop == {"max(prev_token_score/blocks.1.attn.hook_pattern[*])": {"above": 0.99}}
    with pytest.raises(InputError) as e:                     # an error in the variant names the suite's line
        suite_from_data(*load_yaml(DOTTED.replace("RULE", "abve"), str(tmp_path / "s.yaml")))
    assert "s.yaml:12:" in str(e.value) and "did you mean 'above'" in str(e.value)


def test_a_probe_that_writes_where_a_variant_writes_is_refused_before_anything_runs(tmp_path, capsys):
    from clamp.cli import main
    suite = DOTTED.replace("RULE", "above").replace(
        "  phases: {loss: {below: 0.5}}\n",
        "  phases: {loss: {below: 0.5}}\n  probes: {p: [{ablate: blocks.0.attn.hook_z[0]}]}\n").replace(
        "  base: {}\n", "  base: {}\n  clash: {interventions: [{ablate: blocks.0.attn.hook_z[0], steps: [0, 10]}]}\n")
    (tmp_path / "s.yaml").write_text(suite)
    assert main(["bench", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "probes.p[0]: found a second write to blocks.0.attn.hook_z[0]" in err
    assert not (tmp_path / "out").exists()
