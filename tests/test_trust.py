"""Results you can trust: every failure visible, every input bounded, files only where the
user said, no phase change that did not happen. One test per finding; each failed on the commit
before the fix."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import clamp
from clamp.cli import main

TINY = """\
name: tiny
seeds: [0]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 12, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16, checkpoint_every: 4}
"""


def cli(args, capsys=None):
    """`clamp ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and len(lines[0]) <= 320, lines[0]
    return lines[0]


@pytest.fixture
def tiny_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


# ---------------------------------------------------------------------------------------
# 1. A failed run never looks like a success


def _garbage_donor(tmp_path: Path) -> Path:
    """A run directory whose only checkpoint is not a checkpoint."""
    donor = tmp_path / "donor"
    (donor / "checkpoints").mkdir(parents=True)
    (donor / "recipe.yaml").write_text(TINY)
    (donor / "checkpoints" / "step_0000012.pt").write_bytes(b"not a checkpoint at all")
    return donor


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_a_run_that_fails_writes_a_failed_summary_and_exits_1(tmp_path, tiny_file, capsys, seeds):
    donor = _garbage_donor(tmp_path)
    code, out, err = cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet", "--set", f"seeds={seeds}",
                          "--set", f"interventions=[{{clamp: blocks.0.hook_resid_post, to: graft, run: {donor}}}]"],
                         capsys)
    assert code == 1
    dirs = [tmp_path / "o"] if len(seeds) == 1 else [tmp_path / "o" / f"seed_{s}" for s in seeds]
    for d in dirs:
        sm = json.loads((d / "summary.json").read_text())
        assert sm["status"] == "failed" and sm["error_step"] == 0
        assert "not a clamp checkpoint" in sm["error"] and "\n" not in sm["error"]
        assert "Traceback" in (d / sm["error_log"]).read_text()
        assert f"{d / 'summary.json'}" in err and "failed" in err
    if len(seeds) > 1:
        assert json.loads((tmp_path / "o" / "summary.json").read_text())["status"] == "failed"
    assert "2 of 2 run(s) failed" in out or "1 of 1 run(s) failed" in out


def test_resume_onto_unloadable_checkpoints_only_fails_visibly(tmp_path, tiny_file, capsys):
    """(One bad checkpoint among good ones resumes from the newest good one: tests/test_ownership.py.)"""
    assert cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet"], capsys)[0] == 0
    (tmp_path / "o" / "summary.json").unlink()
    for p in (tmp_path / "o" / "checkpoints").iterdir():
        p.write_bytes(b"\x00garbage")
    code, _, err = cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet"], capsys)
    sm = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert code == 1 and sm["status"] == "failed" and "step_0000012.pt" in sm["error"]


def test_a_nan_loss_is_a_failure_with_valid_json(tmp_path, tiny_file, capsys):
    code, _, _ = cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet", "--set", "train.lr=1e30"], capsys)
    assert code == 1
    text = (tmp_path / "o" / "summary.json").read_text()
    sm = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert sm["status"] == "failed"
    for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_non_finite_numbers_are_written_as_null_with_the_reason(tmp_path):
    from clamp.store.files import dumps, read_metrics
    text = dumps({"step": 3, "loss": float("nan"), "x": {"y": float("-inf")}})
    row = json.loads(text, parse_constant=lambda c: pytest.fail(c))
    assert row["loss"] is None and row["x"]["y"] is None
    assert row["non_finite"] == {"loss": "nan", "x.y": "-inf"}
    (tmp_path / "m.jsonl").write_text(text + "\n")
    assert read_metrics(tmp_path / "m.jsonl")[0]["non_finite"]["loss"] == "nan"


def test_no_seed_finished_is_not_success():
    from conftest import tiny

    from clamp.cli import _failures
    from clamp.training.runs import aggregate
    assert aggregate(tiny(), {})["status"] == "failed"
    assert _failures([]) == 1


README_SELECT = """
subcircuits:
  prev_heads:
    sites: [blocks.0.attn.hook_v]
    select: {layer: 0, by: label_prev_token_score, above: 0.5}
probes:
  p: [{ablate: prev_heads}]
"""


@pytest.mark.parametrize("extra, message", [
    ("interventions: [{clamp: 'blocks.0.attn.hook_pattern[0]', to: previous_token, rows: labels}]",
     "interventions[0].rows: found 'labels'; expected 'all' or a position role of fewshot: exemplar, label, "
     "query; did you mean 'label'?"),
    (README_SELECT, "subcircuits.prev_heads.select.by: found 'label_prev_token_score'; expected a per-head measure "
     "this recipe measures"),
    ("phases: {induction_score: {above: 0.5}}", "phases.induction_score: found a column no "
     "measure of this recipe produces"),
    ("train: {stop: {'max(prev_token_score/blocks.5.attn.hook_pattern[*])': {above: 0.5}}}",
     "r.yaml:5: train.stop.'max(prev_token_score/block"),
    ("measure: [loss, induction_score]", "measure[1]: found 'induction_score'; expected a measure this task and "
     "model can produce (fewshot has no repeated-segment probe"),
    ("interventions: [{ablate: hook_logits}]", "interventions[0]: found hook_logits replaced by zero during "
     "training"),
    ("train: {betas: [2.0, -1.0]}", "train.betas: found [2.0, -1.0]; expected two numbers in [0, 1)"),
])
def test_what_a_run_can_know_before_training_plan_and_loader_check(tmp_path, capsys, extra, message):
    p = tmp_path / "r.yaml"
    text = TINY + extra + "\n"
    if extra.startswith("train:"):
        text = TINY.replace("checkpoint_every: 4}", "checkpoint_every: 4, " + extra[len("train: {"):-1] + "}")
    p.write_text(text)
    for verb in ("plan", "run"):
        code, _, err = cli([verb, p, "--out", tmp_path / "o"] if verb == "run" else [verb, p], capsys)
        assert code == 2 and message in one_line(err), err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# 2. Hostile input: one line, exit 2, bounded time and memory


def _hostile(tmp_path: Path) -> list[tuple[str, list, str]]:
    """(what, argv, a piece of the expected message) for every hostile shape found so far."""
    w = tmp_path
    (w / "latin1.yaml").write_bytes(TINY.encode() + b"name: caf\xe9\n")
    (w / "deep.yaml").write_text(TINY + "extra: " + "[" * 400 + "]" * 400 + "\n")
    (w / "merge.yaml").write_text("base: &b {steps: 5}\n" + TINY.replace("train: {", "train: {<<: *b, "))
    (w / "tag.yaml").write_text(TINY + "x: !!python/object/apply:os.system ['true']\n")
    (w / "tagmap.yaml").write_text(TINY + "x: !!python/object/apply:os.system {a: 1}\n")
    (w / "tagscalar.yaml").write_text(TINY + "x: !foo 3\n")
    (w / "bigint.yaml").write_text(TINY.replace("steps: 12", "steps: " + "9" * 5000))
    (w / "biglr.yaml").write_text(TINY.replace("lr: 1.0e-2", "lr: 1" + "0" * 400))
    (w / "zero.yaml").write_text("extends: /dev/zero\n")
    os.mkfifo(w / "fifo.yaml")
    (w / "extfifo.yaml").write_text("extends: fifo.yaml\n")
    (w / "big.yaml").write_text(TINY + "# " + "x" * (11 << 20) + "\n")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (w / "laughs.yaml").write_text(laughs)
    (w / "cycle.yaml").write_text("a: &a [*a]\n")
    (w / "huge.yaml").write_text(TINY.replace("layers: 2", "layers: 2147483648"))
    (w / "longkey.yaml").write_text(TINY + "? " + ("k" * 10_000) + "\n: 1\n")
    (w / "suite_fifo.yaml").write_text("base: fifo.yaml\n")
    (w / "suite_badvar.yaml").write_text("base: tiny.yaml\nvariants:\n  v: {recipe: 5}\n")
    (w / "escape.yaml").write_text('name: "\\U00999999"\n')             # found by the fuzz: chr() out of range
    (w / "suite_scalar.yaml").write_text("base: tiny.yaml\nvariants:\n  v: {train.lr.nan: 0.02}\n")   # found by the fuzz  # noqa: E501
    (w / "tiny.yaml").write_text(TINY)
    sizes = [("model.d_model=1000000", "model"), ("model.attn_only=false", None), ("train.eval_size=1000000000", "eval_size"),  # noqa: E501
             ("train.batch=1000000000", "batch"), ("task.classes=1000000000", "task"),
             ("train.steps=1000000000000", "train.steps")]
    cases = [
        ("non-UTF-8", ["plan", w / "latin1.yaml"], "latin1.yaml:6: found a byte that is not UTF-8 (0xe9"),
        ("nesting", ["plan", w / "deep.yaml"], "found nesting deeper than 64 levels"),
        ("python tag on a list", ["plan", w / "tag.yaml"], "x: found the tag '!!python/object/apply:os.system'"),
        ("python tag on a map", ["plan", w / "tagmap.yaml"], "found the tag '!!python/object/apply:os.system'"),
        ("unknown tag", ["plan", w / "tagscalar.yaml"], "found the tag '!foo'"),
        ("5000-digit int", ["plan", w / "bigint.yaml"], "found an integer of 5,000 digits"),
        ("401-digit lr", ["plan", w / "biglr.yaml"], "found an integer of 401 digits"),
        ("NUL in a path", ["plan", str(w / "a\x00b.yaml")], "found a path with a NUL byte"),
        ("extends /dev/zero", ["plan", w / "zero.yaml"], "extends: found '/dev/zero'"),
        ("FIFO recipe", ["plan", w / "fifo.yaml"], "found a FIFO (named pipe)"),
        ("FIFO extends", ["plan", w / "extfifo.yaml"], "a FIFO (named pipe)"),
        ("FIFO suite base", ["bench", w / "suite_fifo.yaml", "--out", w / "s"], "a FIFO (named pipe)"),
        ("11 MB file", ["plan", w / "big.yaml"], "expected a recipe file of at most 1,048,576 bytes"),
        ("billion laughs", ["plan", w / "laughs.yaml"], "found aliases that expand to more than 100,000 values"),
        ("alias cycle", ["plan", w / "cycle.yaml"], "nesting deeper than 64 levels (through aliases)"),
        ("2^31 layers", ["plan", w / "huge.yaml"], "model.layers: found 2147483648; expected a number in 1..1024"),
        ("10,000-character key", ["plan", w / "longkey.yaml"], "found unknown key"),
        ("variant recipe not a mapping", ["bench", w / "suite_badvar.yaml", "--out", w / "s"],
         "variants.v.recipe: found 5; expected a recipe path or an inline recipe mapping"),
        ("escape past U+10FFFF", ["plan", w / "escape.yaml"], "an escape that names no character"),
        ("variant key path through a number", ["bench", w / "suite_scalar.yaml", "--out", w / "s"],
         "train.lr: 0.01; expected a mapping to set a key in (a key path into the base recipe)"),
        ("--set key path through a number", ["plan", w / "tiny.yaml", "--set", "train.lr.x=1"],
         "train.lr: found 0.01; expected a mapping to set a key in"),
        ("NUL in --out", ["run", w / "tiny.yaml", "--out", "a\x00b"], "--out: found"),
        ("--set huge index", ["plan", w / "tiny.yaml", "--set", "interventions." + "9" * 5000 + ".steps=1"], "found"),
        ("--set tag", ["plan", w / "tiny.yaml", "--set", "train.lr=!!python/name:os.system"], "found the tag"),
    ]
    for s, key in sizes:
        cases.append((f"size {s}", ["plan", w / "tiny.yaml", "--set", s] +
                      (["--set", "model.d_mlp=1000000000"] if key is None else []),
                      "expected a number in 1..1,000,000,000" if "steps" in s else "of memory ("))
    return cases


def test_hostile_input_gets_one_line_exit_2_quickly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for what, argv, message in _hostile(tmp_path):
        t0 = time.perf_counter()
        code, _, err = cli(argv, capsys)
        took = time.perf_counter() - t0
        assert code == 2, (what, err)
        line = one_line(err)
        assert message in line, (what, line)
        assert took < 20, (what, took)                      # a hang would not get here at all
    assert not (tmp_path / "s").exists() and not (tmp_path / "runs").exists()


def test_yaml_merge_keys_merge(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text("x-defaults: &d {steps: 5, lr: 0.5, optimizer: adamw}\n".replace("x-", "")
                                     + TINY.replace("train: {", "train: {<<: *d, "))
    from clamp.names.yamlio import load_yaml_file
    from clamp.recipe.spec import parse_recipe
    data, src = load_yaml_file(tmp_path / "m.yaml", "a recipe file")
    data.pop("defaults")
    r = parse_recipe(data, src)
    assert r.train.steps == 12 and r.train.lr == 0.01 and r.train.optimizer == "adamw"   # explicit keys win
    assert src.where(("train", "optimizer")) == f"{tmp_path / 'm.yaml'}:1"           # located at the anchor


def test_memory_limit_is_a_flag_that_lifts_on_purpose(tmp_path, tiny_file, capsys):
    code, _, err = cli(["plan", tiny_file, "--max-memory", "1K"], capsys)
    assert code == 2 and "of memory" in one_line(err) and "--max-memory" in err
    code, out, _ = cli(["plan", tiny_file, "--max-memory", "none"], capsys)
    assert code == 0 and "memory estimate per run" in out
    code, _, err = cli(["plan", tiny_file, "--max-memory", "lots"], capsys)
    assert code == 2 and "--max-memory: found 'lots'" in one_line(err)


def test_a_broken_pipe_is_not_an_internal_error(tmp_path, tiny_file):
    p = subprocess.Popen([sys.executable, "-m", "clamp.cli", "sites", str(tiny_file)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()                                       # the reader went away (`| head -0`)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "", err


# ---------------------------------------------------------------------------------------
# 3. Files land where the user said, and only there


@pytest.mark.parametrize("name", ["../../../x", "/abs/x", "a/b", ".hidden", "x y"])
def test_run_names_are_names_not_paths(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(TINY.replace("name: tiny", f"name: {json.dumps(name)}"))
    code, _, err = cli(["run", tmp_path / "r.yaml"], capsys)
    assert code == 2 and "r.yaml:1: name: found" in one_line(err) and "expected a name" in err
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("variant", ["/abs/path", "../../x", "a/b"])
def test_variant_names_are_names_not_paths(tmp_path, capsys, variant):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "s.yaml").write_text(f"base: tiny.yaml\nvariants:\n  {json.dumps(variant)}: {{}}\n")
    code, _, err = cli(["bench", tmp_path / "s.yaml", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "variants." in one_line(err) and "expected a name" in err
    assert not (tmp_path / "out").exists()


def test_fresh_deletes_only_a_directory_clamp_made(tmp_path, tiny_file, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, _, err = cli(["run", tiny_file, "--out", mine, "--fresh", "--quiet"], capsys)
    assert code == 2 and "clamp did not make" in one_line(err)
    code, _, err = cli(["run", tiny_file, "--out", mine, "--quiet"], capsys)      # nor writes into it
    assert code == 2 and (mine / "thesis.tex").read_text() == "years of work" and len(list(mine.iterdir())) == 1
    assert cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet"], capsys)[0] == 0
    assert (tmp_path / "o" / ".clamp").is_file()
    code, _, err = cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet", "--fresh", "--set", "train.lr=0.02"],
                       capsys)
    assert code == 0 and "--fresh deleted" in err and str(tmp_path / "o") in err


def test_one_writer_per_directory(tmp_path, tiny_file, capsys):
    slow = tmp_path / "slow.yaml"
    slow.write_text(TINY.replace("steps: 12", "steps: 100000").replace("eval_every: 4", "eval_every: 1000"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "clamp.cli", "run", str(slow), "--out", str(tmp_path / "o"),
                              "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        lock = tmp_path / "o" / ".clamp.lock"
        for _ in range(600):                                # held, and training (its first row written)
            if lock.exists() and lock.read_text().startswith("pid") and (tmp_path / "o" / "metrics.jsonl").exists():
                break
            time.sleep(0.1)
        code, _, err = cli(["run", slow, "--out", tmp_path / "o", "--fresh", "--quiet"], capsys)   # this process
        assert code == 2 and "another clamp process is writing" in one_line(err)
        assert first.poll() is None                         # the first one was left alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the lock died with its holder: the directory can be resumed (and a stale temp file is cleaned up)
    (tmp_path / "o" / ".metrics.jsonl.tmp999").write_text("half")
    code, _, err = cli(["run", slow, "--out", tmp_path / "o", "--quiet", "--set", "train.steps=5"], capsys)
    assert code == 2 and "holds a different recipe" in err          # checked, nothing lost
    from clamp.store.owned import writer
    with writer(tmp_path / "o", "run") as info:
        assert info["removed_tmp"] and not (tmp_path / "o" / ".metrics.jsonl.tmp999").exists()


def test_a_killed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from clamp.analysis import report
    from clamp.store.files import atomic_write
    atomic_write(tmp_path / "report.md", "old")
    import matplotlib.figure

    def boom(self, path, **kw):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    (tmp_path / "loss_curves.png").write_bytes(b"old png")
    with pytest.raises(KeyboardInterrupt):
        report.plot_curves({"a": {0: ([0, 1], [1.0, 0.5])}}, tmp_path / "loss_curves.png")
    assert (tmp_path / "loss_curves.png").read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curves.png", "report.md"]


# ---------------------------------------------------------------------------------------
# 4. No phase change that did not happen


def _suite_dir(tmp_path: Path, name: str, task: str, times: dict, steps: int = 1000) -> Path:
    """A suite directory with hand-written summaries: times[variant][seed] = crossing step or None."""
    d = tmp_path / name
    task_line = ("task: {name: fewshot, classes: 10, labels: 4, dim: 8}" if task == "fewshot" else
                 "task: {name: repeat_tokens, vocab: 16, length: 16, segment: 4}")
    base = (f"model: {{layers: 2, heads: 4, d_model: 16}}\n{task_line}\ntrain: {{steps: {steps}}}\n"
            "subcircuits:\n  a: {sites: [blocks.0.hook_resid_post]}\nphases: {loss: {below: 0.3}}\n")
    variants = {"baseline": "{}", "frozen": "{interventions: [{ablate: a, steps: [0, 500]}]}"}
    text = f"name: {name}\nbase:\n" + "".join("  " + line + "\n" for line in base.splitlines())
    text += "seeds: [0, 1, 2]\nvariants:\n" + "".join(f"  {v}: {o}\n" for v, o in variants.items())
    text += "expect:\n  - {name: freezing delays it, ratio: [frozen, baseline], above: 1.0}\n"
    d.mkdir()
    (d / "suite.yaml").write_text(text)
    for v, per in times.items():
        for seed, t in per.items():
            rd = d / "runs" / v / f"seed_{seed}"
            rd.mkdir(parents=True)
            (rd / "summary.json").write_text(json.dumps({
                "status": "ok", "steps": steps, "final": {"loss": 0.5},
                "phases": {"loss": {"below": {"step": t, "threshold": 0.3}}}}))
    return d


def test_an_expectation_never_passes_on_a_phase_change_that_did_not_happen(tmp_path):
    from clamp.analysis.results import load_results
    never = {s: None for s in (0, 1, 2)}
    res = load_results(_suite_dir(tmp_path, "s", "fewshot", {"baseline": never, "frozen": never}))
    v = res.verdicts[0]
    assert v["verdict"] == "CENSORED" and v["censored"] == 3 and "undecided" in v["note"]
    # a baseline that changed and a frozen run that never did: delayed at least 2x, decided
    res = load_results(_suite_dir(tmp_path, "t", "fewshot", {"baseline": {0: 400, 1: 500, 2: 450}, "frozen": never}))
    assert res.verdicts[0]["verdict"] == "PASS" and res.verdicts[0]["median_range"][1] == float("inf")
    # a baseline that never changed and a frozen run at 300: the ratio is at most 0.3, decided against
    res = load_results(_suite_dir(tmp_path, "u", "fewshot", {"baseline": never, "frozen": {0: 300, 1: 300, 2: 300}}))
    assert res.verdicts[0]["verdict"] == "FAIL" and res.verdicts[0]["median_range"][1] == 0.3
    # one seed changed in neither: the median's range straddles the rule, so it is not decided
    res = load_results(_suite_dir(tmp_path, "w", "fewshot", {"baseline": {0: 400, 1: 500, 2: None},
                                                             "frozen": {0: 300, 1: None, 2: None}}))
    assert res.verdicts[0]["verdict"] == "CENSORED"


def test_graph_says_censored_and_refuses_to_mix_tasks(tmp_path, capsys):
    from clamp.analysis.graph import Graph
    never = {s: None for s in (0, 1, 2)}
    a = _suite_dir(tmp_path, "a", "fewshot", {"baseline": never, "frozen": never})
    b = _suite_dir(tmp_path, "b", "repeat_tokens", {"baseline": {0: 100, 1: 120, 2: 90}, "frozen": never})
    code, out, err = cli(["graph", a, "--out", tmp_path / "g"], capsys)
    assert code == 0 and "unknown (neither run changed in 3 seed(s)" in out and "x1.00" not in out
    code, _, err = cli(["graph", a, b], capsys)
    assert code == 2 and "suites of different tasks" in one_line(err) and "--behaviour" in err
    g = Graph.from_runs([a, b], behaviour="loss:below")
    assert g.g.graph["primary"] == "phase:loss:below"
    code, _, err = cli(["graph", a, b, "--behaviour", "accuracy:above"], capsys)
    assert code == 2 and "--behaviour: found 'accuracy:above'" in one_line(err)


def test_explain_words_and_python_defaults(tmp_path):
    from clamp.analysis.explanations import explain_text
    from clamp.analysis.graph import Graph
    d = _suite_dir(tmp_path, "s", "fewshot", {"baseline": {0: 400, 1: 500, 2: 450}, "frozen": {0: 800, 1: 900, 2: 850}})
    g = Graph.from_runs(d)
    e = clamp.explain(g)                                     # defaults work
    text = explain_text(e)
    assert "when everything else is clamped (baseline)" not in text
    assert clamp.predict(g, ["frozen"])["predicted"]["median"] == 850          # t(T) · t(V)/t(T), per seed


# ---------------------------------------------------------------------------------------
# 5. Defaults that work, a README that runs


def test_paths_in_recipes_are_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
    from clamp.recipe.spec import load_recipe
    (tmp_path / "sub" / "runs" / "donor").mkdir(parents=True)
    (tmp_path / "sub" / "r.yaml").write_text(TINY + """
subcircuits:
  heads: {sites: [blocks.0.attn.hook_z], select: {layer: 0, by: prev_token_score, top: 1, run: runs/donor}}
interventions: [{clamp: blocks.0.hook_resid_post, to: graft, run: runs/donor}]
""")
    monkeypatch.chdir(tmp_path)                          # not where the recipe is
    r = load_recipe("sub/r.yaml")
    assert r.interventions[0].options.run == str(tmp_path / "sub" / "runs" / "donor")
    assert r.subcircuits["heads"].select.run == str(tmp_path / "sub" / "runs" / "donor")


def test_nothing_points_outside_the_repository():
    root = Path(__file__).resolve().parents[1]
    for p in [root / "README.md", *sorted((root / "clamp").rglob("*.py")), *sorted((root / "docs").glob("*.md"))]:
        text = p.read_text()
        assert "../shared" not in text, p
        for doc in ("REFERENCE.md", "DESIGN.md"):
            assert doc not in text, (p, doc)


def test_a_worker_that_dies_is_recorded_as_failed(tmp_path, tiny_file, capsys):
    """A worker process killed outright (as by the OOM killer) leaves failed summaries, exit 1."""
    from clamp.values import VALUES, NoOptions, ValueSource, register_value

    class Die(ValueSource):
        name, Options = "die_now", NoOptions

        def value(self, x, site, ctx):
            os.kill(os.getpid(), signal.SIGKILL)

    register_value(Die)
    try:
        code, out, err = cli(["run", tiny_file, "--out", tmp_path / "o", "--quiet", "--workers", "2",
                              "--set", "seeds=[0, 1]", "--set", "interventions=[{clamp: hook_embed, to: die_now}]"],
                             capsys)
    finally:
        del VALUES["die_now"]
    assert code == 1
    for s in (0, 1):
        sm = json.loads((tmp_path / "o" / f"seed_{s}" / "summary.json").read_text())
        assert sm["status"] == "failed" and "worker process failed" in sm["error"]
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["status"] == "failed"
