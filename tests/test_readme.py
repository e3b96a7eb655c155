"""Every code block of README.md runs as written, so the README cannot drift from the code.

Each fenced block is preceded by a marker `<!-- readme-test: KIND ARGS -->` that says how it is run
(a block without one fails the first test):

    setup-demo, setup-test   the two set-up commands (the test command is the one CI runs; the demo
                             command is run in a fresh clone by a slow test)
    recipe FILE              written to FILE; `clamp plan` as written, and a short `clamp run`
                             (a slow test runs it as written)
    error FILE OLD NEW       FILE with OLD replaced by NEW: `clamp plan` prints exactly the block
    fragment BASE            merged over the recipe BASE (a repository path): plan, and a short run
    suite PATH               written at PATH beside the repository's recipes/: loaded, and a short
                             `clamp bench` (a slow test runs it as written)
    python                   executed in a directory that has the repository's recipes
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from clamp.cli import main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("newcomer", ROOT / "benchmarks" / "newcomer.py")
newcomer = importlib.util.module_from_spec(_spec)                       # the walk-through reads blocks the same way
_spec.loader.exec_module(newcomer)                                      # type: ignore[union-attr]
SHORT = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "train.eval_size=32",
         "--set", "train.checkpoint_every=0"]


def blocks() -> list[tuple[str, list[str], str]]:
    return newcomer.readme_blocks((ROOT / "README.md").read_text())


def of(kind: str) -> list[tuple[list[str], str]]:
    return [(args, body) for k, args, body in blocks() if k == kind]


def workdir(tmp_path: Path) -> Path:
    """A directory that looks like the repository to relative paths (recipes/, clamp/demo/)."""
    (tmp_path / "clamp").mkdir()
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "clamp" / "demo").symlink_to(ROOT / "clamp" / "demo")
    (tmp_path / "benchmarks").mkdir()
    return tmp_path


def clamp_(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_block_has_a_marker_and_every_kind_is_tested():
    kinds = [k for k, _, _ in blocks()]
    assert kinds and "" not in kinds, "a README code block without a readme-test marker"
    assert set(kinds) <= {"setup-demo", "setup-test", "recipe", "error", "fragment", "suite", "python"}
    assert kinds.count("setup-demo") == 1 and kinds.count("setup-test") == 1


def test_the_test_command_is_the_one_ci_runs():
    (_, body), = of("setup-test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test" in body and "python -m pytest" in body and "grep" in ci
    cmd = next(line.strip() for line in (ROOT / "README.md").read_text().splitlines()
               if "pip install -e '.[test" in line)
    assert cmd == body.strip()
    (_, demo), = of("setup-demo")
    assert demo.strip().endswith("clamp demo") and "pip install torch==2.13.0" in demo


def readme_times() -> dict[str, tuple[float, float]]:
    """The README's table of times: step → (CPU s, wall s)."""
    text = (ROOT / "README.md").read_text().split("<!-- readme-times -->", 1)[1]
    rows = re.findall(r"^\| `([^`]+)` \| ([\d.]+) s \| ([\d.]+) s \|$", text.split("\n\n", 1)[0], re.M)
    return {name: (float(cpu), float(wall)) for name, cpu, wall in rows}


def test_readme_times_are_what_the_walk_through_measured():
    """Each time the README gives is within 1.5x of the one benchmarks/newcomer.py recorded, and the
    record is of the README's own commands (a changed command must be measured again)."""
    claims = readme_times()
    record = json.loads((ROOT / "benchmarks" / "readme_times.json").read_text())
    assert set(claims) == {"install (demo command)", "clamp demo", "clamp demo --quick", "install (test command)",
                           "python -m pytest -q"}
    (_, demo), = of("setup-demo")
    (_, test), = of("setup-test")
    commands = {"install (demo command)": newcomer.split_setup(demo)[0],
                "install (test command)": newcomer.split_setup(test)[0]}
    for name, (cpu, wall) in claims.items():
        assert name in record, f"{name}: not measured; run python benchmarks/newcomer.py --record"
        got = record[name]
        assert got["ok"], f"{name} failed when it was measured"
        if name in commands:
            assert got["command"] == commands[name], f"{name}: measured {got['command']!r}, the README has another"
        else:
            assert got["command"].endswith(name), (name, got["command"])
        for what, claim, measured in (("CPU", cpu, got["cpu_s"]), ("wall", wall, got["wall_s"])):
            assert measured / 1.5 <= claim <= measured * 1.5, \
                f"README: {name} {claim:g} s {what}; measured {measured:g} s (benchmarks/readme_times.json)"
    assert record["machine"]["mode"] == "as written"


def test_the_quick_demo_is_the_full_demo_shortened():
    """`clamp demo --quick` changes only the length, the learning rate, the evaluations and the offset."""
    from clamp.cli import QUICK_DEMO
    from clamp.recipe.suite import load_suite
    full = load_suite(ROOT / "clamp" / "demo" / "demo_suite.yaml")
    quick = load_suite(ROOT / "clamp" / "demo" / "demo_suite.yaml", [(t, "--quick") for t in QUICK_DEMO])
    assert [r.variant for r in full.runs()] == [r.variant for r in quick.runs()]
    assert quick.base.train.steps == 400 and quick.base.task.options.offset == 0
    what = [[(iv.kind, iv.target, iv.source, iv.options) for iv in r.recipe.interventions] for r in full.runs()]
    assert what == [[(iv.kind, iv.target, iv.source, iv.options) for iv in r.recipe.interventions]
                    for r in quick.runs()] and quick.expect == full.expect


@pytest.mark.parametrize("i", range(len(of("recipe"))))
def test_recipes_plan_and_run(tmp_path, capsys, monkeypatch, i):
    args, body = of("recipe")[i]
    monkeypatch.chdir(workdir(tmp_path))
    Path(args[0]).write_text(body)
    code, out, err = clamp_(["plan", args[0]], capsys)
    assert code == 0, err
    # short: one seed, tiny batches and evaluations, and 300 steps where the recipe's windows allow it
    # (`end` and percentages scale with the run; a window of absolute steps keeps the steps as written)
    from clamp.names.errors import InputError
    from clamp.recipe.spec import load_recipe
    steps = []
    try:
        if load_recipe(args[0]).train.steps > 300:
            load_recipe(args[0], ["train.steps=300"])
            steps = ["--set", "train.steps=300"]
    except InputError:
        pass
    code, out, err = clamp_(["run", args[0], "--out", "r", "--quiet", "--set", "seeds=[0]", "--set", "train.batch=2",
                             "--set", "train.eval_every=1000", "--set", "train.eval_size=16",
                             "--set", "train.checkpoint_every=0", *steps], capsys)
    assert code == 0, err


@pytest.mark.parametrize("i", range(len(of("error"))))
def test_error_lines_are_what_clamp_prints(tmp_path, capsys, monkeypatch, i):
    args, body = of("error")[i]
    name, old, new = args
    (recipe_body,) = [b for a, b in of("recipe") if a[0] == name]
    assert old in recipe_body
    monkeypatch.chdir(workdir(tmp_path))
    Path(name).write_text(recipe_body.replace(old, new, 1))
    code, out, err = clamp_(["plan", name], capsys)
    assert code == 2
    # the line is what clamp prints, except that a list of choices ("one of a, b, c") may have grown:
    # adding a value source, a measure or a task must not break the README's example
    lists = re.compile(r"one of ([^;]+?)(?=;|$)")
    shown, printed = lists.findall(body.strip()), lists.findall(err.strip())
    assert lists.sub("one of …", err.strip()) == lists.sub("one of …", body.strip())
    assert len(shown) == len(printed)
    for a, b in zip(shown, printed):
        assert set(a.split(", ")) <= set(b.split(", ")), (a, b)


@pytest.mark.parametrize("i", range(len(of("fragment"))))
def test_fragments_work_in_their_recipe(tmp_path, capsys, monkeypatch, i):
    from clamp.names.yamlio import load_yaml
    from clamp.recipe.overrides import deep_merge
    args, body = of("fragment")[i]
    base = load_yaml((ROOT / args[0]).read_text())[0]
    merged = deep_merge(base, load_yaml(body)[0])
    monkeypatch.chdir(workdir(tmp_path))
    Path("r.yaml").write_text(yaml.safe_dump(merged))
    assert clamp_(["plan", "r.yaml"], capsys)[0] == 0
    code, out, err = clamp_(["run", "r.yaml", "--out", "r", "--quiet", "--set", "seeds=[0]", *SHORT], capsys)
    assert code == 0, err


@pytest.mark.parametrize("i", range(len(of("suite"))))
def test_suites_load_and_run(tmp_path, capsys, monkeypatch, i):
    from clamp import load_results, load_suite
    args, body = of("suite")[i]
    monkeypatch.chdir(workdir(tmp_path))
    Path(args[0]).write_text(body)
    suite = load_suite(args[0])
    assert suite.runs()
    code, out, err = clamp_(["bench", args[0], "--out", "s", "--quiet", "--set", "train.stop={}", *SHORT], capsys)
    res = load_results("s")
    assert all(r["status"] == "ok" for r in res.rows) and len(res.rows) == len(suite.runs())
    assert code in (0, 1) and (code == 0) == all(v["verdict"] == "PASS" for v in res.verdicts)


def test_python_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir(tmp_path))
    for _, body in of("python"):
        exec(compile(body, "README.md", "exec"), {"__name__": "__readme__"})
    assert "ok" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# As written (slow: science runs and a fresh install)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(of("recipe"))))
def test_recipes_run_as_written(tmp_path, capsys, monkeypatch, i):
    args, body = of("recipe")[i]
    monkeypatch.chdir(workdir(tmp_path))
    Path(args[0]).write_text(body)
    assert clamp_(["run", args[0], "--quiet"], capsys)[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(of("suite"))))
def test_suites_run_as_written(tmp_path, capsys, monkeypatch, i):
    args, body = of("suite")[i]
    monkeypatch.chdir(workdir(tmp_path))
    Path(args[0]).write_text(body)
    code, out, err = clamp_(["bench", args[0], "--quiet"], capsys)
    assert code == 0, out + err


@pytest.mark.slow
def test_the_demo_command_from_a_fresh_clone(tmp_path):
    (_, body), = of("setup-demo")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    r = subprocess.run(["bash", "-c", body], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PASS" in r.stdout and (clone / "runs" / "demo" / "loss_curves.png").exists()
