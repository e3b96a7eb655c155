"""The subcircuit graph, explain, compare and predict on a small real suite, against numbers
recomputed by hand from results.csv."""
from __future__ import annotations

import csv
import json
import math
import statistics

import networkx as nx
import pytest

import clamp
from clamp.analysis.graph import Graph
from clamp.api import bench as run_suite
from clamp.recipe.suite import load_suite

BASE = """
model: {layers: 2, heads: 4, d_model: 32}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 400, batch: 16, lr: 5.0e-3, eval_every: 10, eval_size: 64, checkpoint_every: 300, evaluators: [train],
        stop: {loss: {below: 0.1}}}
measure: [loss, accuracy, label_prev_token_score, induction_strength]
subcircuits:
  others: {sites: ['blocks.1.attn.hook_v[0,2,3]']}
  match: {sites: ['blocks.1.attn.hook_pattern[1]']}
  copy: {sites: [hook_logits]}
  prev_heads:
    sites: [blocks.0.attn.hook_z]
    select: {layer: 0, by: label_prev_token_score, top: 1}
phases: {loss: {below: 0.2773}}
interventions: [{ablate: others, name: single_head}]
"""
A = ("[{clamp: blocks.0.hook_resid_post, to: embedding, name: prev_token},"
     " {clamp: blocks.1.attn.hook_attn_scores, to: previous_token_input, name: prev_token}]")
COPY = "[{clamp: copy, to: perfect_copy, head: 'blocks.1.attn.hook_attn_scores[1]'}]"
MATCH = "[{clamp: match, to: induction}]"


def suite_text():
    keep = "{ablate: others, name: single_head}"
    iv = lambda *parts: "[" + ", ".join([keep] + [p.strip("[]") for p in parts]) + "]"  # noqa: E731
    base = "\n".join("  " + line for line in BASE.strip().splitlines())
    return f"""name: tiny
base:
{base}
seeds: [0, 1, 2]
variants:
  baseline: {{}}
  eight: {{interventions: []}}
  match: {{interventions: {iv(MATCH)}}}
  copy: {{interventions: {iv(COPY)}}}
  ideal: {{interventions: {iv(A)}}}
  ideal_copy: {{interventions: {iv(A, COPY)}}}
  ideal_match: {{interventions: {iv(A, MATCH)}}}
  labels3: {{task.labels: 3}}
  ideal_copy_labels3: {{interventions: {iv(A, COPY)}, task.labels: 3}}
  ideal_match_labels3: {{interventions: {iv(A, MATCH)}, task.labels: 3}}
"""


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("g")
    (d / "suite.yaml").write_text(suite_text())
    run_suite(load_suite(d / "suite.yaml"), d / "out", workers=2)
    return d / "out"


def crossings(out):
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    t = {}
    for r in rows:
        v = r["crossing:loss:below"]
        t[r["variant"], int(r["seed"])] = float(v) if v else float(r["steps"])  # never: run length
    return t


def never_changed(out) -> set:
    with open(out / "results.csv") as f:
        return {(r["variant"], int(r["seed"])) for r in csv.DictReader(f) if not r["crossing:loss:below"]}


def ratios(out, t, a: str, b: str) -> list[float]:
    """Per seed, a's time over b's; a seed where neither run changed says nothing and is left out."""
    nv = never_changed(out)
    return [t[a, s] / t[b, s] for s in range(3) if not ((a, s) in nv and (b, s) in nv)]


def median_or_none(xs):
    return statistics.median(xs) if xs else None


def test_effect_edges_are_paired_ratios_of_the_runs(suite_dir):
    g = Graph.from_runs([suite_dir])
    t = crossings(suite_dir)
    edges = {(a, d["variant"].split("/")[1], d["parent"].split("/")[1]): d
             for a, b, d in g.g.edges(data=True) if d["kind"] == "effect"}
    d = edges["match", "match", "baseline"]
    want = ratios(suite_dir, t, "match", "baseline")
    assert d["median"] == pytest.approx(median_or_none(want))
    assert sorted(d["per_seed"].values()) == pytest.approx(sorted(want))
    assert edges["single_head", "baseline", "eight"]["median"] == pytest.approx(
        median_or_none(ratios(suite_dir, t, "baseline", "eight")))
    # ideal_copy has two parents (ideal, copy): C given A and A given C
    jc = edges["copy", "ideal_copy", "ideal"]
    assert jc["with"] == []
    assert jc["median"] == pytest.approx(median_or_none(ratios(suite_dir, t, "ideal_copy", "ideal")))
    assert ("prev_token", "ideal_copy", "copy") in edges
    assert g.g.nodes["copy"]["kind"] == "subcircuit" and g.g.nodes["copy"]["sites"] == ["hook_logits"]
    comp = [(a, b, d) for a, b, d in g.g.edges(data=True) if d["kind"].endswith("composition")]
    assert {d["kind"] for _, _, d in comp} == {"k_composition", "q_composition", "v_composition"}
    # composition is scored between the per-head subcircuits of different layers only: the layer-0
    # heads the run selected (prev_heads) into layer 1's match pattern and other heads' values
    assert {(a, b) for a, b, _ in comp} <= {("prev_heads", "match"), ("prev_heads", "others")}
    assert ("prev_heads", "match") in {(a, b) for a, b, _ in comp}


def test_explain_isolations_and_bottleneck(suite_dir):
    g = Graph.from_runs([suite_dir])
    e = clamp.explain(g, "baseline")
    t = crossings(suite_dir)
    assert e["subcircuits"]["match"]["variant"].endswith("/ideal_copy")      # everything but B clamped
    assert e["subcircuits"]["copy"]["variant"].endswith("/ideal_match")      # everything but C clamped
    assert "prev_token" not in e["subcircuits"]                             # no variant clamps B and C only
    med = {x: statistics.median(t[v.split("/")[1], s] for s in range(3))
           for x, v in (("match", e["subcircuits"]["match"]["variant"]), ("copy", e["subcircuits"]["copy"]["variant"]))}
    assert med[e["bottleneck"]] == max(med.values())


def test_compare_attributes_the_shift(suite_dir):
    g = Graph.from_runs([suite_dir])
    c = clamp.compare(g, "baseline", "labels3")
    t = crossings(suite_dir)
    per_beh = ratios(suite_dir, t, "labels3", "baseline")
    per_b = ratios(suite_dir, t, "ideal_copy_labels3", "ideal_copy")
    beh, b = median_or_none(per_beh), median_or_none(per_b)
    assert c["phase_change_ratio"]["median"] == pytest.approx(beh)
    assert c["subcircuits"]["match"]["median"] == pytest.approx(b)
    consistent = lambda xs: bool(xs) and (all(x > 1 for x in xs) or all(x < 1 for x in xs))  # noqa: E731
    if consistent(per_beh) and consistent(per_b):         # a shift is attributed only where both moved
        assert c["subcircuits"]["match"]["share"] == pytest.approx(math.log(b) / math.log(beh))
    if consistent(per_beh) and any(consistent(ratios(suite_dir, t, f"ideal_{y}_labels3", f"ideal_{y}"))
                                   for y in ("copy", "match")):
        assert c["mainly"] in ("match", "copy")
    else:
        assert "mainly" not in c
    if not consistent(per_beh):
        assert "no shift to attribute" in explain_text_of(c)


def explain_text_of(c):
    from clamp.analysis.explanations import compare_text
    return compare_text(c)


def test_predict_multiplies_effects_and_measures_its_error(suite_dir):
    g = Graph.from_runs([suite_dir])
    p = clamp.predict(g, ["ideal", "copy"], "baseline")
    t = crossings(suite_dir)
    pred = [t["baseline", s] * (t["ideal", s] / t["baseline", s]) * (t["copy", s] / t["baseline", s])
            for s in range(3)]
    assert p["predicted"]["median"] == pytest.approx(statistics.median(pred))
    assert p["actual"]["variant"].endswith("/ideal_copy")
    errs = [pred[s] / t["ideal_copy", s] for s in range(3)]
    assert p["error"]["median"] == pytest.approx(statistics.median(errs))


def test_predict_bottleneck_is_the_slowest_isolated_subcircuit_left(suite_dir):
    g = Graph.from_runs([suite_dir])
    t = crossings(suite_dir)
    p = clamp.predict(g, ["ideal"], "baseline")              # A clamped: B and C are left to form
    b = p["bottleneck"]
    assert b["left"] == ["copy", "match"] and b["lower_bound"]
    per = [max(t["ideal_copy", s], t["ideal_match", s]) for s in range(3)]  # B alone, C alone
    assert b["median"] == pytest.approx(statistics.median(per))
    assert b["error"]["median"] == pytest.approx(statistics.median(per[s] / t["ideal", s] for s in range(3)))
    # A and C clamped leaves B, whose isolation is that very run: no prediction, and it says why
    q = clamp.predict(g, ["ideal", "copy"], "baseline")
    assert "bottleneck" not in q and "combination itself" in q["bottleneck_unavailable"]


def test_graph_files_round_trip(suite_dir, tmp_path):
    g = Graph.from_runs([suite_dir])
    paths = g.save(tmp_path)
    again = Graph.load(paths["json"])
    assert set(again.g.nodes) == set(g.g.nodes) and again.g.number_of_edges() == g.g.number_of_edges()
    assert clamp.explain(again, "baseline")["bottleneck"] == clamp.explain(g, "baseline")["bottleneck"]
    gm = nx.read_graphml(paths["graphml"])
    assert set(gm.nodes) == set(g.g.nodes)
    assert paths["png"].stat().st_size > 10_000


def test_cli_graph_and_explain(suite_dir, tmp_path, capsys):
    from clamp.cli import main

    def run(*a):
        code = main([str(x) for x in a])
        out, err = capsys.readouterr()
        return code, out, err
    code, out, err = run("graph", suite_dir, "--out", tmp_path)
    assert code == 0 and (tmp_path / "graph.graphml").exists(), err
    code, out, err = run("explain", suite_dir, "--compare", "baseline", "labels3")
    assert code == 0 and "isolated formation" in out, err
    code, out, err = run("explain", suite_dir, "--predict", "ideal,copy", "--json")
    assert code == 0 and json.loads(out)["actual"]["variant"].endswith("ideal_copy")
    code, out, err = run("explain", suite_dir, "--compare", "baseline", "labelz3")
    assert code == 2 and "did you mean 'labels3'" in err and len(err.strip().splitlines()) == 1
