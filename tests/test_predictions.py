"""A suite's predictions judged paired by seed, and a pair that tested nothing left out of them:
`clamp explain` lists each expectation's per-seed values, and a variant whose head selection picked
no head in a seed (so it trained exactly as its pair did) is reported as untested there, in the
verdicts, the graph's effect edges and the text."""
from __future__ import annotations

import json

import pytest

from clamp.analysis.graph import Graph
from clamp.analysis.results import load_results
from clamp.cli import main

RUN = """\
name: src
seeds: [0, 1]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 16, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16, evaluators: [train]}
measure: [loss, label_prev_token_score]
phases: {loss: {below: 5.0}}
"""


def suite(run: str) -> str:
    sel = lambda rule: (f"{{sites: [blocks.0.attn.hook_z], select: {{layer: 0, by: label_prev_token_score, "  # noqa: E731
                        f"{rule}, run: '{run}/seed_{{seed}}'}}}}")
    return f"""\
name: preds
base:
  name: b
  model: {{layers: 2, heads: 4, d_model: 16}}
  task: {{name: fewshot, classes: 10, labels: 4, dim: 8}}
  train: {{steps: 16, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16, evaluators: [train]}}
  measure: [loss]
  phases: {{loss: {{below: 1.15}}}}
  subcircuits:
    nobody: {sel("above: 100.0")}
    best: {sel("top: 1")}
seeds: [0, 1]
variants:
  baseline: {{}}
  nothing: {{interventions: [{{ablate: nobody, how: zero}}]}}
  one: {{interventions: [{{ablate: best, how: zero}}]}}
expect:
  - {{name: selecting nobody changes nothing, ratio: [nothing, baseline], below: 2.0}}
  - {{name: ablating the best head keeps the crossing, ratio: [one, baseline], above: 0.0}}
"""


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("preds")
    (d / "run.yaml").write_text(RUN)
    assert main(["run", str(d / "run.yaml"), "--out", str(d / "run"), "--quiet"]) == 0
    (d / "suite.yaml").write_text(suite(str(d / "run")))
    assert main(["bench", str(d / "suite.yaml"), "--out", str(d / "b"), "--quiet"]) in (0, 1)
    return d / "b"


def metrics(b, variant, seed):
    return [json.loads(x) for x in (b / "runs" / variant / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()]


def test_a_pair_that_trained_alike_is_untested_not_a_result(bench_dir):
    for s in (0, 1):                           # the independent fact: the two runs' metrics are identical
        strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_ms")} for r in rows]  # noqa: E731
        assert strip(metrics(bench_dir, "nothing", s)) == strip(metrics(bench_dir, "baseline", s))
        assert strip(metrics(bench_dir, "one", s)) != strip(metrics(bench_dir, "baseline", s))
    v = {x["name"]: x for x in load_results(bench_dir).verdicts}
    nothing, one = v["selecting nobody changes nothing"], v["ablating the best head keeps the crossing"]
    assert nothing["verdict"] == "NO DATA" and nothing["n"] == 0
    assert [u["seed"] for u in nothing["untested"]] == [0, 1] and "tests nothing" in nothing["note"]
    assert one["untested"] == [] and one["n"] == 2 and one["verdict"] == "PASS"
    for report in ("report.md", "report.html"):           # what bench wrote says so too
        assert "left out, seed 0, 1: both runs trained alike" in (bench_dir / report).read_text()
    g = Graph.from_runs([bench_dir])
    edges = {d["variant"].split("/")[1]: d for _, _, d in g.g.edges(data=True) if d["kind"] == "effect"}
    assert "nothing" not in edges                  # no seed left to compare: no effect edge
    assert edges["one"]["untested"] == [] and len(edges["one"]["per_seed"]) == 2


def test_explain_says_which_predictions_held_per_seed(bench_dir, capsys):
    assert main(["explain", str(bench_dir)]) == 0
    out = capsys.readouterr().out
    assert "predictions (2), paired by seed" in out
    assert "NO DATA  selecting nobody changes nothing" in out and "untested (same plan as its pair) in seed 0, 1" in out
    per = {x["seed"]: x["value"] for x in load_results(bench_dir).verdicts[1]["per_seed"]}
    assert f"per seed 0: {per[0]:.3g}+  1: {per[1]:.3g}+" in out
    assert main(["explain", str(bench_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["verdict"] for p in got] == ["NO DATA", "PASS"] and got[0]["untested"] == [0, 1]
