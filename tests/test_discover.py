"""`clamp discover`: roles and formation times of every head, from a run directory alone."""
from __future__ import annotations

import json

import pytest

from clamp.cli import main
from clamp.store.rundir import RunDir
from clamp.training.discover import ROLES, catalogue, discover_seed

TINY = """\
name: tiny
seeds: [0]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 12, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16, checkpoint_every: 4}
measure: [loss, label_prev_token_score, induction_strength, first_position_score, composition]
interventions:
  - clamp: blocks.0.attn.hook_pattern[2]
    to: previous_token
    strength: 1.0
  - clamp: blocks.1.attn.hook_pattern[1]
    to: induction
    strength: 1.0
    steps: [8, end]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("disc")
    (d / "tiny.yaml").write_text(TINY)
    assert main(["run", str(d / "tiny.yaml"), "--out", str(d / "run"), "--quiet"]) == 0
    return d / "run"


def test_clamped_heads_are_found_in_their_roles_when_their_clamps_start(run_dir):
    found = discover_seed(RunDir(run_dir), 0, catalogue())
    by = {h["name"]: h for h in found["heads"]}
    assert by["prev_token@L0H2"]["formed"] == 0 and by["prev_token@L0H2"]["holds"]
    assert by["induction@L1H1"]["formed"] == 8                     # the clamp starts at step 8
    assert by["induction@L1H1"]["values"][0] < 0.5
    assert found["checkpoints"] == [4, 8, 12] and found["from_metrics"] == ["induction", "prev_token", "sink"]


def test_checkpoints_evaluated_afterwards_give_what_the_run_measured(run_dir):
    """Post hoc at each checkpoint = online at that step (the independent reference: the run's own
    metrics.jsonl)."""
    dense = discover_seed(RunDir(run_dir), 0, catalogue())
    late = discover_seed(RunDir(run_dir), 0, catalogue(), use_metrics=False)
    assert late["from_metrics"] == []
    metrics = {r["step"]: r for r in RunDir(run_dir).metrics()}
    compared = 0
    for h in late["heads"]:
        for step, v in zip(h["steps"], h["values"]):
            if h["column"] in metrics.get(step, {}):
                assert v == pytest.approx(metrics[step][h["column"]], abs=1e-4)
                compared += 1
    assert compared >= 6
    assert {h["name"] for h in dense["heads"] if h["holds"]} >= {"prev_token@L0H2", "induction@L1H1"}


def test_cli_writes_discovery_and_refuses_bad_thresholds(run_dir, capsys):
    assert main(["discover", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "prev_token@L0H2" in out and "induction@L1H1" in out
    saved = json.loads((run_dir / "discovery.json").read_text())
    assert saved["seed"] == 0 and any(h["name"] == "prev_token@L0H2" for h in saved["heads"])
    assert main(["discover", str(run_dir), "--threshold", "inductoin=0.3"]) == 2
    assert "a role: one of prev_token, induction" in capsys.readouterr().err
    assert main(["discover", str(run_dir), "--threshold", "induction"]) == 2
    for bad in ("induction=.nan", "induction=true", "induction=[1]", "a.b=0.3", "=0.3", "induction=abc"):
        capsys.readouterr()
        assert main(["discover", str(run_dir), "--threshold", bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "expected ROLE=NUMBER" in err, (bad, err)


def test_a_run_without_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(TINY.replace("checkpoint_every: 4", "checkpoint_every: 0"))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "o" / "checkpoints").rename(tmp_path / "elsewhere")
    assert main(["discover", str(tmp_path / "o")]) == 2
    assert "a run without checkpoints" in capsys.readouterr().err


def test_every_role_names_a_registered_per_head_measure():
    from clamp.measures import MEASURES
    for r in ROLES:
        assert all(m in MEASURES and MEASURES[m].head_site for m in r.measures), r


def test_a_per_head_measure_is_a_role_with_the_threshold_its_class_declares():
    """Any per-head measure no role uses is a role of its name at its class's `role` threshold; one
    that declares `role = None` (a signed score: negative_similarity) is none."""
    from conftest import registries_restored

    from clamp.measures import Measure, register_measure
    with registries_restored():
        @register_measure
        class Focus(Measure):
            name = "focus_test"
            head_site = "blocks.{L}.attn.hook_pattern"
            role = 0.3

            def compute(self, outputs, batches, seam):
                return {}

        @register_measure
        class Signed(Measure):
            name = "signed_test"
            head_site = "blocks.{L}.attn.hook_pattern"
            role = None

            def compute(self, outputs, batches, seam):
                return {}
        roles = {r.name: r for r in catalogue()}
        assert roles["focus_test"].threshold == 0.3 and roles["focus_test"].measures == ("focus_test",)
        assert "signed_test" not in roles and "negative_similarity" not in roles
        assert {r.name: r.threshold for r in catalogue({"focus_test": 0.6})}["focus_test"] == 0.6


def test_a_heads_effect_is_the_loss_with_its_output_weights_zeroed(run_dir):
    """Zero-ablating a head's output z ≡ zeroing its slice of W_O: the independent reference."""
    import torch

    from clamp.store.rundir import load_checkpoint
    from clamp.training.discover import head_effects
    from clamp.training.train import Trainer
    rd = RunDir(run_dir)
    eff = head_effects(rd, 0, [], how="zero")
    step, path = rd.checkpoints()[-1]
    recipe = rd.recipe()
    for L, h in ((0, 1), (1, 3)):
        t = Trainer(recipe, 0, train=False)
        t.load_state(load_checkpoint(path))
        with torch.no_grad():
            t.model.blocks[L].attn.W_O[h].zero_()                 # [head, d_head, d_model]
        loss = t.evaluate(probes=False, every=True)["loss"]
        assert eff["steps"][-1] == step
        assert eff["loss"][-1] + eff["heads"][f"L{L}H{h}"][-1] == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("how", ["mean"])            # zero's target is a constant: the simpler case
def test_attribution_patching_is_the_derivative_of_the_ablation(run_dir, how):
    """The attribution estimate of every head equals a central finite difference of the loss along the
    path from the head's output to its ablated value (z + e (target - z), e = ±0.01), computed with
    plain forward passes; and head_effects reports it beside the ablations with their agreement."""
    import torch

    from clamp.store.rundir import load_checkpoint
    from clamp.training.discover import attribution, head_effects
    from clamp.training.train import Trainer
    rd = RunDir(run_dir)
    step, path = rd.checkpoints()[-1]
    t = Trainer(rd.recipe(), 0, train=False)
    t.load_state(load_checkpoint(path))
    est = attribution(t, how)
    assert est is not None and len(est) == 8
    batch = next(b for k, b, _ in t.eval_forwards(every=True) if k == "train")

    def loss(L: int, h: int, e: float) -> float:
        fns = dict(next(t.intervener.passes(batch)))
        inner = fns.get(f"blocks.{L}.attn.hook_z")

        def moved(x):
            x = inner(x) if inner else x
            target = torch.zeros_like(x) if how == "zero" else x.mean(0, keepdim=True)
            out = x.clone()
            out[:, :, h] = x[:, :, h] + e * (target[:, :, h] - x[:, :, h])
            return out
        fns[f"blocks.{L}.attn.hook_z"] = moved
        t.intervener.attach(fns)
        with torch.no_grad():
            value = t.task.loss(t.seam.forward(batch), batch).item()
        t.intervener.detach()
        return value
    scale = max(abs(v) for v in est.values())
    for L in range(2):
        for h in range(4):
            fd = (loss(L, h, 0.01) - loss(L, h, -0.01)) / 0.02
            assert fd == pytest.approx(est[f"L{L}H{h}"], abs=0.03 * scale + 2e-4), (L, h)
    eff = head_effects(rd, 0, [], how=how)
    att = eff["attribution"]
    assert set(att["heads"]) == set(eff["heads"]) and all(len(v) == len(eff["steps"]) for v in att["heads"].values())
    assert att["heads"]["L0H1"][-1] == pytest.approx(est["L0H1"], abs=1e-6)
    assert att["agreement"]["n"] == 8 * len(eff["steps"]) and -1 <= att["agreement"]["spearman"] <= 1
    assert "skipped" in head_effects(rd, 0, [], how="resample")["attribution"]


def test_a_recipe_with_subcircuits_selected_by_a_measure_is_discovered(tmp_path, capsys):
    """The recipe's own subcircuits may select heads by a measure the discovery does not use."""
    text = TINY.replace("interventions:", "subcircuits:\n  top: {sites: [blocks.0.attn.hook_z], "
                                          "select: {layer: 0, by: label_prev_token_score, top: 1}}\ninterventions:")
    (tmp_path / "s.yaml").write_text(text)
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["discover", str(tmp_path / "run")]) == 0
    assert "attribution patching" in capsys.readouterr().out


def test_a_redundant_group_is_told_apart_from_its_members(run_dir):
    """Two heads clamped to the same ideal pattern: the group ablation and each member's are reported."""
    from clamp.training.discover import head_effects
    heads = [{"role": "prev_token", "layer": 0, "head": h, "holds": True} for h in (2, 3)]
    eff = head_effects(RunDir(run_dir), 0, heads, how="mean")
    g = eff["groups"]["prev_token"]
    assert g["heads"] == ["L0H2", "L0H3"] and len(g["delta"]) == len(eff["steps"])
    assert g["largest_single"] == max(eff["heads"]["L0H2"][-1], eff["heads"]["L0H3"][-1])
    assert g["redundant"] == (g["delta"][-1] > 2 * max(g["largest_single"], 0) and g["delta"][-1] > 0)


PLAIN = TINY.split("interventions:")[0].replace("seeds: [0]", "seeds: [0, 1]").replace(", composition]", "]")


def test_the_generated_suite_tests_what_was_found_and_runs(tmp_path, capsys):
    """From a plain run: discover (thresholds low enough that both seeds have groups), write the suite,
    and bench it; each discovered group gets a clamp, an ablation and a freeze, with predictions."""
    import yaml

    from clamp.recipe.suite import load_suite
    (tmp_path / "plain.yaml").write_text(PLAIN)
    assert main(["run", str(tmp_path / "plain.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    code = main(["discover", str(tmp_path / "run"), "--ablate", "none", "--threshold", "prev_token=0.05",
                 "induction=-1", "--suite", str(tmp_path / "iso.yaml")])
    out = capsys.readouterr().out
    assert code == 0 and "wrote" in out and (tmp_path / "iso.yaml").exists()
    suite = load_suite(tmp_path / "iso.yaml")
    data = yaml.safe_load((tmp_path / "iso.yaml").read_text())
    assert {"baseline", "clamp_induction_L1", "ablate_induction_L1", "clamp_prev_token_L0"} <= set(data["variants"])
    assert suite.seeds == (0, 1)
    assert all(e["of"] == "crossing" or e["of"].startswith("phase:max(") for e in data["expect"])   # a dependency
    assert main(["discover", str(tmp_path / "run"), "--suite", str(tmp_path / "iso.yaml")]) == 2   # never replaced
    assert "a new file" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "iso.yaml"), "--out", str(tmp_path / "b"), "--quiet"]) in (0, 1)
    from clamp import load_results
    res = load_results(tmp_path / "b")
    assert len(res.rows) == 2 * len(data["variants"]) and all(r["status"] == "ok" for r in res.rows)


def test_composition_along_training_is_what_the_run_measured_and_makes_a_graph(run_dir, capsys):
    """Each pair of discovered heads in different layers: K/Q/V composition at every checkpoint, equal to
    the run's own online composition columns; the graph holds them, with the phase changes."""
    import networkx as nx

    from clamp.analysis.discovered import GRAPH_JSON, GRAPH_PNG, discovery_graph
    from clamp.names.columns import composition_column
    found = discover_seed(RunDir(run_dir), 0, catalogue())
    metrics = {r["step"]: r for r in RunDir(run_dir).metrics()}
    pairs = {(c["from"], c["to"]) for c in found["composition"]}
    assert ("prev_token@L0H2", "induction@L1H1") in pairs
    for c in found["composition"]:
        a, b = c["from"].split("@L")[1], c["to"].split("@L")[1]
        (l1, h1), (l2, h2) = (tuple(map(int, x.split("H"))) for x in (a, b))
        col = composition_column(c["kind"], l1, h1, l2, h2)
        for step, v in zip(c["steps"], c["values"]):
            assert v == pytest.approx(metrics[step][col], abs=1e-4)
        assert c["direction"] in ("rise", "fall") and ("reason" in c) == (c["moves"] is None)
        assert c["notable"] == (abs(c["values"][-1] - c["values"][0]) >= 0.2 * c["baseline"])
    g = discovery_graph(found)
    assert g.nodes["prev_token@L0H2"]["layer"] == 0 and g.nodes["induction@L1H1"]["formed"] == 8
    assert {d["kind"] for _, _, d in g.edges(data=True)} >= {"k_composition", "forms"}
    assert any(d.get("kind") == "behaviour" for _, d in g.nodes(data=True))
    assert main(["discover", str(run_dir), "--ablate", "none"]) == 0
    capsys.readouterr()
    saved = nx.node_link_graph(json.loads((run_dir / GRAPH_JSON).read_text()), edges="links", multigraph=True,
                               directed=True)
    assert set(saved.nodes) == set(g.nodes) and (run_dir / GRAPH_PNG).stat().st_size > 1000
    assert main(["report", str(run_dir)]) == 0
    capsys.readouterr()
    assert "Discovered heads" in (run_dir / "report.html").read_text()


def test_python_api_and_run_suite_needs_a_suite(run_dir, capsys):
    import clamp
    got = clamp.discover(run_dir, ablate=None)
    assert isinstance(got, clamp.Discovery) and got.suite is None and 0 in got.seeds
    assert any(h["name"] == "prev_token@L0H2" for h in got.seeds[0]["heads"])
    assert main(["discover", str(run_dir), "--run-suite"]) == 2
    assert "--suite OUT.yaml" in capsys.readouterr().err


def test_a_group_most_seeds_have_is_tested_and_the_others_are_said(tmp_path):
    """Pure data: a role held in 2 of 3 seeds gets its variants (the third seed selects no head, said in a
    note); one held in 1 of 3 gets none; heads that differ by seed are selected per seed."""
    from clamp.training.isolation import isolation_suite
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    for s in range(3):
        (tmp_path / f"seed_{s}").mkdir()

    def head(role, L, h, formed):
        return {"role": role, "layer": L, "head": h, "holds": True, "formed": formed, "threshold": 0.5,
                "name": f"{role}@L{L}H{h}"}
    found = {s: {"heads": heads, "measures": {"prev_token": "prev_token_score", "induction": "induction_strength",
                                              "sink": "first_position_score"}, "checkpoints": [100, 200]}
             for s, heads in {0: [head("induction", 1, 2, 100), head("sink", 1, 0, 50)],
                              1: [head("induction", 1, 3, 200)],
                              2: [head("prev_token", 0, 1, 100)]}.items()}
    suite, notes = isolation_suite(tmp_path, found, "iso")
    assert set(suite["variants"]) == {"baseline", "clamp_induction_L1", "ablate_induction_L1", "freeze_induction_L1"}
    sc = suite["variants"]["baseline"]["subcircuits"]["induction@L1"]
    assert sc["select"]["run"].endswith("seed_{seed}") and sc["select"]["by"] == "induction_strength"
    assert suite["variants"]["freeze_induction_L1"]["interventions"][0]["steps"] == [0, 150]   # median of 100, 200
    assert any("seed(s) 2 have no such head" in n for n in notes)


def test_a_dependency_gets_its_own_experiments_and_the_suite_loads(tmp_path):
    """Pure data: prev_token@L0H2 K-composes into induction@L1H1 (a notable rise) in both seeds. The
    suite times the induction role forming (a phase rule on the largest layer-1 score, the measure added
    to every variant) and predicts it later under the prev-token ablation and earlier under its clamp;
    a pair variant (prev-token clamped, induction ablated) is judged against induction ablated alone;
    a role without an ideal pattern (sink) gets a graft from the baseline's last checkpoint."""
    import yaml

    from clamp.names.yamlio import load_yaml
    from clamp.recipe.suite import suite_from_data
    from clamp.training.isolation import dependencies, isolation_suite, suite_yaml
    (tmp_path / "recipe.yaml").write_text(PLAIN.replace(", induction_strength", ""))   # the suite adds it
    for s in range(3):
        (tmp_path / f"seed_{s}").mkdir()

    def head(role, L, h, formed):
        return {"role": role, "layer": L, "head": h, "holds": True, "formed": formed, "threshold": 0.3,
                "name": f"{role}@L{L}H{h}"}

    def comp(a, b, kind, rise, notable=True):
        return {"from": a, "to": b, "kind": kind, "direction": "rise" if rise else "fall", "notable": notable}
    found = {s: {"heads": [head("prev_token", 0, 2, 4), head("induction", 1, 1, 8), head("sink", 1, 3, 4)],
                 "measures": {"prev_token": "label_prev_token_score", "induction": "induction_strength",
                              "sink": "first_position_score"}, "checkpoints": [4, 8, 12],
                 "composition": [comp("prev_token@L0H2", "induction@L1H1", "k", True),
                                 comp("prev_token@L0H2", "induction@L1H1", "v", True, notable=False),
                                 comp("prev_token@L0H2", "sink@L1H3", "q", s == 0)]}
             for s in range(3)}
    assert dependencies(found) == {("prev_token@L0", "induction@L1"): ["k"]}   # sink: a rise in 1 seed of 3
    suite, notes = isolation_suite(tmp_path, found, "iso")
    v = suite["variants"]
    assert {"graft_sink_L1", "clamp_prev_token_L0__ablate_induction_L1"} <= set(v)
    assert v["graft_sink_L1"]["interventions"][0]["to"] == "graft"
    col = "max(induction_strength/blocks.1.attn.hook_pattern[*])"
    assert v["baseline"]["phases"][col] == {"above": 0.3} and "induction_strength" in v["baseline"]["measure"]
    assert list(v["baseline"]["phases"])[0] == "loss"                    # `crossing` is still the loss's
    judged = {e["name"]: e for e in suite["expect"]}
    late = judged["ablating prev_token@L0 delays induction@L1 forming (K-composition)"]
    assert late["ratio"] == ["ablate_prev_token_L0", "baseline"] and late["of"] == f"phase:{col}:above"
    assert judged["clamping prev_token@L0 brings induction@L1 forming earlier"]["below"] == 1.0
    pair = next(e for e in suite["expect"] if e["ratio"][0] == "clamp_prev_token_L0__ablate_induction_L1")
    assert pair["ratio"][1] == "ablate_induction_L1" and pair["of"] == "crossing"
    assert [iv.get("to", "ablate") for iv in v[pair["ratio"][0]]["interventions"]] == \
        ["previous_token", "ablate"]
    text = suite_yaml(suite, notes, tmp_path)
    assert "&subcircuits" in text and "&phases" in text and "id00" not in text
    data, src = load_yaml(text, str(tmp_path / "iso.yaml"))
    assert yaml.safe_load(text)["variants"]["baseline"]["phases"][col] == {"above": 0.3}
    loaded = suite_from_data(data, src, default_name="iso")               # every quantity names a rule it has
    assert len(loaded.recipes) == len(v)
    none, _ = isolation_suite(tmp_path, found, "iso", graft="none")
    assert not any(k.startswith("graft_") for k in none["variants"])
    every, _ = isolation_suite(tmp_path, found, "iso", graft="all")
    assert {"graft_prev_token_L0", "graft_induction_L1", "graft_sink_L1"} <= set(every["variants"])


def test_heads_found_by_their_cost_are_tested_on_their_output_and_weights(tmp_path):
    """An `unexplained` group (no measure selects it) held by the same heads in every seed is ablated at
    hook_z and frozen in all four weights; one whose heads differ by seed is not tested, and says why."""
    from clamp.training.isolation import isolation_suite
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    for s in range(2):
        (tmp_path / f"seed_{s}").mkdir()

    def head(L, h):
        return {"role": "unexplained", "layer": L, "head": h, "holds": True, "formed": 300, "threshold": 0.4,
                "name": f"unexplained@L{L}H{h}"}
    found = {s: {"heads": [head(1, 0), head(1, 2), head(0, s)], "measures": {}, "checkpoints": [100, 400]}
             for s in range(2)}
    suite, notes = isolation_suite(tmp_path, found, "iso")
    assert set(suite["variants"]) == {"baseline", "ablate_unexplained_L1", "freeze_unexplained_L1",
                                      "graft_unexplained_L1"}
    sc = suite["variants"]["baseline"]["subcircuits"]
    assert sc["unexplained@L1"] == {"sites": ["blocks.1.attn.hook_z[0,2]"],
                                    "params": [f"blocks.1.attn.W_{w}[0,2]" for w in "QKVO"]}
    assert sc["unexplained@L1H2"]["sites"] == ["blocks.1.attn.hook_z[2]"]
    assert any("unexplained@L0: its heads differ by seed" in n for n in notes)
    assert any("weights until step 300" in e["name"] for e in suite["expect"])
    from clamp.training.isolation import acted_on  # what each kind of role's experiments act on
    assert acted_on("induction_strength") == acted_on("prev_token_score") == ("hook_pattern", "QK")
    assert acted_on("copying_score") == ("hook_z", "VO") and acted_on(None) == ("hook_z", "QKVO")


def test_discover_a_recipe_trains_it_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.yaml").write_text(PLAIN.replace("seeds: [0, 1]", "seeds: [0]"))
    assert main(["discover", "plain.yaml", "--ablate", "none"]) == 0
    assert "in runs/tiny" in capsys.readouterr().out and (tmp_path / "runs" / "tiny" / "discovery.json").exists()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    (tmp_path / "b" / "nock.yaml").write_text(PLAIN.replace("checkpoint_every: 4", "checkpoint_every: 0"))
    assert main(["discover", "nock.yaml"]) == 2                      # refused before anything is trained
    assert "add train.checkpoint_every" in capsys.readouterr().err and not (tmp_path / "b" / "runs").exists()


def test_a_token_task_with_its_default_phase_rules_is_discovered(tmp_path, capsys):
    """repeat_tokens's default rules read induction_score columns; the ablation pass, which measures
    the loss alone, must not carry them."""
    (tmp_path / "tok.yaml").write_text("name: tok\nseeds: [0]\nmodel: {layers: 2, heads: 2, d_model: 16}\n"
                                       "task: {name: repeat_tokens, vocab: 8, length: 12, segment: 4}\n"
                                       "train: {steps: 8, batch: 4, eval_every: 4, eval_size: 8, "
                                       "checkpoint_every: 4}\n")
    code = main(["run", str(tmp_path / "tok.yaml"), "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0
    capsys.readouterr()
    assert main(["discover", str(tmp_path / "r"), "--threshold", "induction=-1"]) == 0
    out = capsys.readouterr().out
    assert "induction@L" in out and "loss +Δ ablated (mean, end)" in out


def test_a_head_with_several_roles_is_named_for_the_clearest():
    from clamp.training.discover import dominant
    heads = [{"name": "copying@L1H0", "role": "copying", "layer": 1, "head": 0, "holds": True, "final": 0.9996,
              "threshold": 0.7},
             {"name": "induction@L1H0", "role": "induction", "layer": 1, "head": 0, "holds": True, "final": 0.78,
              "threshold": 0.5},
             {"name": "sink@L1H0", "role": "sink", "layer": 1, "head": 0, "holds": False, "final": 0.99,
              "threshold": 0.5}]
    assert dominant(heads)[(1, 0)]["name"] == "induction@L1H0"           # 0.78/0.5 > 0.9996/0.7; sink lost it


def test_heads_that_matter_without_a_role_are_found_by_their_ablation_cost():
    """A head holding no role whose ablation costs at least half the costliest head's is `unexplained`,
    formed when its cost first passed that; a head with a role, or a cheap one, is not."""
    from clamp.training.discover import MATTERS, unexplained
    effects = {"how": "mean", "steps": [0, 100, 200, 300],
               "heads": {"L0H0": [0.0, 0.1, 0.9, 1.0],      # the costliest: holds a role below
                         "L0H1": [0.0, 0.0, 0.2, 0.6],      # no role, costs 0.6 >= 0.5: unexplained, from 300
                         "L1H0": [0.0, 0.7, 0.7, 0.55],     # no role, from 100
                         "L1H1": [0.0, 0.3, 0.3, 0.2]}}     # too cheap
    heads = [{"name": "prev_token@L0H0", "role": "prev_token", "layer": 0, "head": 0, "holds": True}]
    got = unexplained(heads, effects)
    assert MATTERS == 0.5
    assert [(h["name"], h["formed"], h["final"], h["threshold"]) for h in got] == [
        ("unexplained@L1H0", 100, 0.55, 0.5), ("unexplained@L0H1", 300, 0.6, 0.5)]
    assert unexplained(heads, {**effects, "heads": {k: [0.0] * 4 for k in effects["heads"]}}) == []
