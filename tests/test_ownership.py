"""Nothing lost, nothing run unasked.

clamp owns only the directories it made (a marker that verifies against the directory's own
manifest, never a file name), deletes and overwrites only what it wrote there, imports the plug-ins
a run directory lists only when asked, and locates every error where its value was written.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clamp.cli import main

TINY = """\
name: tiny
seeds: [0]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 12, batch: 8, lr: 1.0e-2, eval_every: 4, eval_size: 16, checkpoint_every: 4}
"""
SUITE = "base: tiny.yaml\nseeds: [0]\nvariants: {a: {}}\n"
PROBES = "probes:\n  p: [{ablate: blocks.0.hook_resid_post}]\n"


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err and len(lines[0]) <= 320, lines[0]
    return lines[0]


def snapshot(d: Path) -> dict:
    """Every entry under `d` (hidden ones too): its kind, bytes and mode; for comparing before and after."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(d))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
    return out


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sk.yaml").write_text(SUITE)
    (tmp_path / "probes.yaml").write_text(PROBES)
    return tmp_path


# ---------------------------------------------------------------------------------------
# A directory that merely looks like clamp's


def test_a_directory_with_clamp_like_file_names_is_not_adopted(files, capsys):
    u = files / "u"
    u.mkdir()
    (u / "suite.yaml").write_text("my: own\n")
    (u / "results.csv").write_text("x,y\n")
    (u / "precious.txt").write_text("p\n")
    before = snapshot(u)
    code, _, err = cli(["bench", files / "sk.yaml", "--out", u, "--quiet"], capsys)
    assert code == 2 and "clamp did not make" in one_line(err) and "no .clamp marker" in err
    code, _, err = cli(["bench", files / "sk.yaml", "--out", u, "--quiet", "--fresh"], capsys)
    assert code == 2 and "clamp did not make" in one_line(err)
    assert snapshot(u) == before


@pytest.mark.parametrize("marker", [
    "my notes\n",
    '{"kind": "run", "created": "2026-01-01T00:00:00", "by": "clamp"}\n',                     # an older clamp's
    '{"by": "clamp", "format": 2, "kind": "run", "id": "' + "0" * 32 + '", "created": "x", "check": "0"}\n',
])
def test_a_file_named_dot_clamp_is_not_a_marker(files, capsys, marker):
    u4 = files / "u4"
    u4.mkdir()
    (u4 / ".clamp").write_text(marker)
    (u4 / "precious.txt").write_text("p\n")
    before = snapshot(u4)
    for extra in (["--fresh"], []):
        code, _, err = cli(["run", files / "tiny.yaml", "--out", u4, "--quiet", *extra], capsys)
        assert code == 2 and "clamp did not make" in one_line(err)
    assert snapshot(u4) == before


def test_a_marker_copied_without_its_manifest_does_not_verify(files, capsys):
    assert cli(["run", files / "tiny.yaml", "--out", files / "o", "--quiet"], capsys)[0] == 0
    u = files / "u"
    u.mkdir()
    (u / ".clamp").write_bytes((files / "o" / ".clamp").read_bytes())
    (u / "thesis.tex").write_text("years of work")
    before = snapshot(u)
    code, _, err = cli(["run", files / "tiny.yaml", "--out", u, "--quiet", "--fresh"], capsys)
    assert code == 2 and "manifest" in one_line(err)
    assert snapshot(u) == before


def test_fresh_deletes_what_clamp_wrote_and_keeps_the_rest(files, capsys):
    o = files / "o"
    assert cli(["run", files / "tiny.yaml", "--out", o, "--quiet"], capsys)[0] == 0
    (o / "precious.txt").write_text("mine")
    (o / "checkpoints" / "notes.md").write_text("mine too")
    code, _, err = cli(["run", files / "tiny.yaml", "--out", o, "--quiet", "--fresh", "--set", "train.lr=0.02"], capsys)
    assert code == 0
    assert "--fresh deleted" in err and "metrics.jsonl" in err and "summary.json" in err
    assert "kept 2 item(s) clamp did not write: precious.txt, checkpoints/notes.md" in err
    assert (o / "precious.txt").read_text() == "mine" and (o / "checkpoints" / "notes.md").read_text() == "mine too"
    assert json.loads((o / "summary.json").read_text())["status"] == "ok"


def test_a_file_clamp_did_not_write_is_never_overwritten_in_its_own_directory(files, capsys):
    o = files / "o"
    assert cli(["run", files / "tiny.yaml", "--out", o, "--quiet"], capsys)[0] == 0
    (o / "report.html").write_text("my own page")
    code, _, err = cli(["report", o], capsys)
    assert code == 2 and "a file clamp did not write" in one_line(err)
    assert (o / "report.html").read_text() == "my own page"


def test_a_run_never_writes_into_a_suite_directory(files, capsys):
    s = files / "s"
    assert cli(["bench", files / "sk.yaml", "--out", s, "--quiet"], capsys)[0] == 0
    before = snapshot(s)
    code, _, err = cli(["run", files / "tiny.yaml", "--out", s, "--quiet"], capsys)
    assert code == 2 and "a suite directory" in one_line(err) and "expected a directory for a run" in err
    code, _, err = cli(["bench", files / "sk.yaml", "--out", files / "s" / "runs" / "a" / "seed_0", "--quiet"], capsys)
    assert code == 2 and "a seed run directory" in one_line(err)
    assert snapshot(s) == before


def test_a_recipe_that_extends_another_is_named_by_its_own_file(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    (files / "longer.yaml").write_text("extends: tiny.yaml\ntrain: {steps: 16}\n")
    assert cli(["run", "longer.yaml", "--quiet"], capsys)[0] == 0
    assert (files / "runs" / "longer" / "summary.json").is_file() and not (files / "runs" / "tiny").exists()


VERB_ARGS = [
    ["run", "{tiny}", "--out", "{u}", "--quiet"], ["run", "{tiny}", "--out", "{u}", "--quiet", "--fresh"],
    ["bench", "{suite}", "--out", "{u}", "--quiet"], ["bench", "{suite}", "--out", "{u}", "--quiet", "--fresh"],
    ["report", "{u}"], ["graph", "{u}"], ["graph", "{u}", "--out", "{u}"], ["probe", "{u}", "{probes}"],
    ["explain", "{u}"], ["report", "{u}", "--trust-plugins"],
]
CLAMP_NAMES = [".clamp", ".clamp.manifest", ".clamp.lock", "suite.yaml", "results.csv", "recipe.yaml", "metrics.jsonl",
               "summary.json", "plan.txt", "report.html", "report.md", "loss_curves.png", "error.log", "graph.json",
               ".metrics.jsonl.tmp123", "checkpoints", "runs", "seed_0", "report"]
names = st.one_of(st.sampled_from(CLAMP_NAMES), st.text(st.characters(blacklist_characters="/\x00",
                                                                       blacklist_categories=("Cs",)),
                                                        min_size=1, max_size=12).filter(lambda n: n not in (".", "..")))
contents = st.one_of(st.binary(max_size=64), st.sampled_from([
    b"my notes\n", b'{"by": "clamp", "kind": "run", "created": "now"}\n', b"clamp manifest " + b"0" * 32 + b"\n",
    b"name: x\nseeds: [0]\n", b"base: tiny.yaml\n", b'{"status": "ok", "steps": 12}\n',
    b"variant,seed,status\nv,0,ok\n"]))
tree = st.dictionaries(names, st.one_of(contents, st.dictionaries(names, contents, max_size=3)), min_size=1, max_size=6)


@settings(max_examples=int(os.environ.get("CLAMP_OWNERSHIP_EXAMPLES", 12)), deadline=None,
          derandomize="CLAMP_OWNERSHIP_EXAMPLES" not in os.environ, suppress_health_check=list(HealthCheck))
@given(layout=tree, verb=st.sampled_from(VERB_ARGS))
def test_no_verb_changes_a_directory_clamp_did_not_make(tmp_path_factory, capsys, layout, verb):
    tmp = tmp_path_factory.mktemp("own")
    (tmp / "tiny.yaml").write_text(TINY)
    (tmp / "sk.yaml").write_text(SUITE)
    (tmp / "probes.yaml").write_text(PROBES)
    u = tmp / "u"
    u.mkdir()
    for name, body in layout.items():
        if isinstance(body, dict):
            (u / name).mkdir()
            for sub, b in body.items():
                (u / name / sub).write_bytes(b)
        else:
            (u / name).write_bytes(body)
    before = snapshot(u)
    args = [a.format(tiny=tmp / "tiny.yaml", suite=tmp / "sk.yaml", u=u, probes=tmp / "probes.yaml") for a in verb]
    code, _, err = cli(args, capsys)
    assert code in (0, 2), (args, err)
    assert "internal error" not in err and "Traceback" not in err, err
    assert snapshot(u) == before, (args, err)


# ---------------------------------------------------------------------------------------
# Plug-ins are code: a run directory's are imported only when asked

EVIL = """\
import os, pathlib
pathlib.Path(os.environ["CLAMP_TEST_SENTINEL"]).write_text("ran")
"""


def _clamp(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "clamp.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_opening_a_run_directory_runs_none_of_its_plugins_unless_trusted(tmp_path, capsys, monkeypatch):
    from conftest import registries_restored
    sentinel = tmp_path / "ran.txt"
    monkeypatch.setenv("CLAMP_TEST_SENTINEL", str(sentinel))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text(EVIL)
    (tmp_path / "r.yaml").write_text("plugins: [evil.py]\n" + TINY)
    (tmp_path / "probes.yaml").write_text(PROBES)

    def fresh(args):
        """`clamp ARGS` as a new process would see it: no plug-in imported before."""
        with registries_restored():
            return cli(args, capsys)
    code, _, _ = fresh(["run", "r.yaml", "--out", "o", "--quiet"])
    assert code == 0 and sentinel.read_text() == "ran"                  # the user ran the recipe: its plug-in ran
    sentinel.unlink()
    for verb in (["report", "o"], ["probe", "o", "probes.yaml"]):
        code, _, err = fresh(verb)
        assert code == 0, err
        assert not sentinel.exists(), verb
        assert "did not import 1 plug-in(s) listed in o/recipe.yaml" in err and "--trust-plugins" in err
    code, _, err = fresh(["report", "o", "--plugin", "evil.py"])        # the same file, named by the user
    assert code == 0 and sentinel.exists() and "did not import" not in err
    sentinel.unlink()
    code, _, err = fresh(["report", "o", "--trust-plugins"])
    assert code == 0 and sentinel.exists() and "did not import" not in err


def test_a_run_directory_that_needs_its_plugin_says_so(tmp_path, capsys, monkeypatch):
    from conftest import registries_restored
    ext = Path(__file__).resolve().parent.parent / "recipes" / "extension"
    (tmp_path / "my_ext_needed.py").write_text((ext / "my_ext.py").read_text())
    (tmp_path / "r.yaml").write_text((ext / "running_mean.yaml").read_text().replace("seeds: [0, 1]", "seeds: [0]")
                                     .replace("steps: 150", "steps: 20").replace("my_ext.py", "my_ext_needed.py"))
    monkeypatch.chdir(tmp_path)
    with registries_restored():
        assert cli(["run", "r.yaml", "--out", "o", "--quiet"], capsys)[0] == 0
    before = snapshot(tmp_path / "o")
    with registries_restored():
        code, _, err = cli(["report", "o"], capsys)
    assert code == 2, err
    line = one_line(err)
    assert line.startswith("clamp: error: o/recipe.yaml: plugins: found plug-in(s) not imported:")
    assert "my_ext_needed.py" in line
    assert "--trust-plugins" in line and "running_mean" in line
    assert snapshot(tmp_path / "o") == before
    with registries_restored():
        assert cli(["report", "o", "--trust-plugins"], capsys)[0] == 0


# ---------------------------------------------------------------------------------------
# Errors where the value was written

BASE = "name: b\nseeds: [0]\nmodel: {layers: 2, heads: 4, d_model: 16}\n" \
       "task: {name: fewshot, classes: 10, labels: 4, dim: 8}\ntrain: {steps: 12, batch: 8}\n"


@pytest.mark.parametrize("suite, extra, expected", [
    ("base: b.yaml\nseeds: [0]\nset: [train.steps=0]\nvariants: {v: {}}\n", [],
     "s.yaml:3: set[0]: train.steps: found 0"),
    ("base: b.yaml\nseeds: [0]\nset:\n  - train.lr=0.1\n  - train.batch=-1\nvariants: {v: {}}\n", [],
     "s.yaml:5: set[1]: train.batch: found -1"),
    ("base: b.yaml\nvariants:\n  v: {a.b.c.d.e: 1}\n", [], "s.yaml:3: variants.v: a: found unknown key 'a'"),
    ("base: b.yaml\nvariants:\n  v:\n    train: {steps: -3}\n", [], "s.yaml:4: variants.v: train.steps: found -3"),
    ("base: b.yaml\nvariants:\n  v: {}\n  w: {task.labels: many}\n", [], "s.yaml:4: variants.w: task.labels: found"),
    ("base: b.yaml\nvariants: {v: {}}\ngrid:\n  train.lr: [0.1, -2]\n", [], "s.yaml:4: grid: train.lr: found -2"),
    ("base: b.yaml\nvariants: {v: {}}\n", ["--set", "train.steps=0"], "--set train.steps=0: train.steps: found 0"),
    ("base: b.yaml\nvariants: {v: {}}\n", ["--set", "model.nope=1"], "--set model.nope=1: model.nope: found unknown"),
    ("base: b.yaml\nset: ['=1']\nvariants: {v: {}}\n", [], "s.yaml:2: set[0]: found '=1'"),
    ("base: b.yaml\nvariants: {v: {}}\n", [], None),
])
def test_errors_name_the_file_and_line_that_hold_the_value(tmp_path, capsys, suite, extra, expected):
    (tmp_path / "b.yaml").write_text(BASE)
    (tmp_path / "s.yaml").write_text(suite)
    code, _, err = cli(["bench", tmp_path / "s.yaml", "--out", tmp_path / "out", "--max-memory", "1", *extra], capsys)
    line = one_line(err)
    if expected is None:
        assert code == 2 and "memory" in line                 # valid: refused only by the memory limit
    else:
        assert code == 2 and line.startswith(f"clamp: error: {tmp_path / expected}" if expected[0] != "-"
                                             else f"clamp: error: {expected}"), line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# Edges: one line, exit 2, nothing written


def _chain(d: Path, n: int) -> Path:
    for i in range(n):
        (d / f"c{i}.yaml").write_text(f"extends: c{i + 1}.yaml\n" if i < n - 1 else TINY)
    return d / "c0.yaml"


@pytest.mark.parametrize("case", ["dim", "newline", "chain", "readme_plugin", "readme_flag", "seeds", "suite_runs",
                                  "window", "passwd"])
def test_edges_are_one_line_exit_2(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README").write_text("not code\n")
    r = tmp_path / "r.yaml"
    args: list = ["run", r, "--quiet"]
    if case == "dim":
        r.write_text(TINY.replace("dim: 8", f"dim: {2 ** 63}"))
        want = "task.dim: found 9223372036854775808; expected an integer below 2^53"
    elif case == "newline":
        r.write_text(TINY.replace("name: tiny", 'name: "abc\\n"'))
        want = "name: found 'abc\\n'; expected a name"
    elif case == "chain":
        args = ["run", _chain(tmp_path, 2000), "--quiet"]
        want = "extends: found 'c32.yaml', file 33 of a chain of extends; expected at most 32 files"
    elif case == "readme_plugin":
        r.write_text("plugins: [./README]\n" + TINY)
        want = "plugins[0]: found './README'; expected a .py file or a package directory"
    elif case == "readme_flag":
        r.write_text(TINY)
        args += ["--plugin", "README"]
        want = "--plugin: found 'README'; expected a .py file or a package directory"
    elif case == "seeds":
        r.write_text(TINY.replace("seeds: [0]", "seeds: [" + ", ".join(map(str, range(20001))) + "]"))
        want = "seeds: found 20001 seeds; expected at most 1,000 seeds in one recipe"
    elif case == "suite_runs":
        (tmp_path / "tiny.yaml").write_text(TINY)
        lrs = ", ".join(f"{(i + 1) / 100:g}" for i in range(17))
        (tmp_path / "s.yaml").write_text("base: tiny.yaml\nseeds: [" + ", ".join(map(str, range(600))) + "]\n"
                                         "variants: {a: {}}\ngrid: {train.lr: [" + lrs + "]}\n")
        args = ["bench", tmp_path / "s.yaml", "--quiet"]
        want = "grid: found 1 variant(s) × 17 grid point(s) × 600 seed(s) = 10,200 runs; expected at most 1,000"
    elif case == "window":
        r.write_text(TINY + "interventions: [{ablate: blocks.0.hook_resid_post, steps: [50, 100]}]\n")
        want = "found [50, 100]; expected a window inside the run's 12 steps; it starts after the run ends"
    else:
        r.write_text("extends: /etc/passwd\n")
        want = "extends: found '/etc/passwd', whose content is text ("
    code, _, err = cli(args, capsys)
    line = one_line(err)
    assert code == 2 and want in line, line
    assert "root:" not in line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------
# Failures that explain themselves


def _kill_self_if(key, progress=None):
    if key == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return key


def test_a_worker_that_dies_fails_only_its_own_job():
    from clamp.training.pool import Job, run_jobs
    jobs = [Job(k, _kill_self_if, (k,)) for k in ("a", "die", "b", "c", "d")]
    done = []
    out = run_jobs(jobs, 2, on_done=lambda o: done.append(o.key))
    assert [o.key for o in out] == ["a", "die", "b", "c", "d"] and sorted(done) == sorted(["a", "die", "b", "c", "d"])
    assert [o.value for o in out] == ["a", None, "b", "c", "d"]
    assert out[1].error == "worker process failed: it died (killed by signal 9) before finishing"
    assert all(o.error is None for i, o in enumerate(out) if i != 1)


KILLER = """\
import os, signal
from clamp.measures import Measure, register_measure

@register_measure
class Once(Measure):
    name = "once"
    doc = "kills its own worker the first time any run evaluates it (a worker that dies)"

    def compute(self, outputs, batches, seam):
        try:
            os.close(os.open(os.environ["CLAMP_TEST_FLAG"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return {"once": 1.0}
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_worker_fails_its_run_only_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    from conftest import registries_restored
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "tiny.yaml").write_text("plugins: [killer.py]\nmeasure: [loss, once]\n" + TINY)
    (tmp_path / "s.yaml").write_text("base: tiny.yaml\nseeds: [0, 1]\nvariants: {a: {}, b: {train.lr: 0.02}}\n")
    monkeypatch.setenv("CLAMP_TEST_FLAG", str(tmp_path / "flag"))
    monkeypatch.chdir(tmp_path)
    args = ["bench", "s.yaml", "--out", "out", "--quiet", "--workers", "2", "--no-ensemble"]
    with registries_restored():
        code, _, err = cli(args, capsys)                 # the pool's workers are forked: one kills itself
    assert code == 1
    status = [r.split(",")[3] for r in (tmp_path / "out" / "results.csv").read_text().splitlines()[1:]]
    assert sorted(status) == ["failed", "ok", "ok", "ok"], status
    assert "killed by signal 9" in err and err.count("clamp: run ") == 1
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Runs that did not finish" in page and "killed by signal 9" in page
    with registries_restored():
        code, _, err = cli(args, capsys)
    assert code == 0, err
    status = [r.split(",")[3] for r in (tmp_path / "out" / "results.csv").read_text().splitlines()[1:]]
    assert status == ["ok"] * 4


def test_a_corrupt_last_checkpoint_resumes_from_the_previous_one(files, capsys):
    o, ref = files / "o", files / "ref"
    assert cli(["run", files / "tiny.yaml", "--out", ref, "--quiet"], capsys)[0] == 0
    assert cli(["run", files / "tiny.yaml", "--out", o, "--quiet"], capsys)[0] == 0
    (o / "summary.json").unlink()                                     # as if killed after the last checkpoint
    (o / "checkpoints" / "step_0000012.pt").write_bytes(b"torn write")
    code, _, err = cli(["run", files / "tiny.yaml", "--out", o, "--quiet"], capsys)
    assert code == 0 and "resumed from step 8, the newest checkpoint that loads" in err and "step_0000012.pt" in err
    sm = json.loads((o / "summary.json").read_text())
    assert sm["status"] == "ok" and sm["steps"] == 12 and sm["resumed_from"] == 8
    assert sm["skipped_checkpoints"][0]["checkpoint"].endswith("step_0000012.pt")
    def rows(d):
        return [{k: v for k, v in json.loads(x).items() if "_s" not in k}
                for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(o) == rows(ref)                                      # resumed exactly: the same rows
