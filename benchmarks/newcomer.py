"""A newcomer's first hour, timed: every code block of README.md run against a fresh clone.

    python benchmarks/newcomer.py                 # every block as written (science runs included: long)
    python benchmarks/newcomer.py --short         # recipes and suites shortened to a few steps
    python benchmarks/newcomer.py --record        # also write benchmarks/readme_times.json
    python benchmarks/newcomer.py --record --only setup-test    # measure the test command again

The clone is of this repository's committed HEAD (uncommitted changes are not in it; the script
says so). The two set-up commands run exactly as written in a clean environment (no virtual
environment, no PYTHONPATH): each is split at its last `&&` so that the install and what follows
(`clamp demo`, `python -m pytest -q`) are timed apart; `clamp demo --quick` is timed too. Every
other block runs in the demo clone's virtual environment the way the README presents it (with the
nnsight extra installed where the README asks for it): a recipe
is written to its file, planned and run; an error example is planned and its output compared with
the README's line; a fragment is merged over its recipe and run; a suite is benched; a Python
block is executed. Each step's wall time and CPU time (user + system of every process it started)
is printed with the machine's load average and core count beside it; `--record` keeps the set-up
steps' times in benchmarks/readme_times.json, which tests/test_readme.py compares with the README's
table of times (a claim more than 1.5x off fails).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "benchmarks" / "readme_times.json"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
SHORT = ("--set train.steps=20 train.eval_every=10 train.eval_size=32 train.checkpoint_every=0 "
         "seeds=[0] train.stop={}")


def readme_blocks(text: str) -> list[tuple[str, list[str], str]]:
    """(kind, arguments, body) of every fenced block, from its `<!-- readme-test: KIND ARGS -->` marker."""
    out = []
    for m in BLOCK.finditer(text):
        marker = shlex.split(m.group("marker") or "")
        out.append((marker[0] if marker else "", marker[1:], m.group("body")))
    return out


def split_setup(body: str) -> tuple[str, str]:
    """A set-up command → (the install, what it runs after: `clamp demo`, `python -m pytest -q`)."""
    head, _, last = body.strip().rpartition(" && ")
    return head, last


def clean_env() -> dict:
    """The environment of a new shell: no virtual environment, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    return env


class Step:
    """One timed shell command in the clone."""

    def __init__(self, name: str, command: str, cwd: Path, env: dict, timeout: float):
        self.name, self.command = name, command
        self.failed: list[str] = []                # the tests that failed, for a test command
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=timeout)
            self.code, self.out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            self.code, self.out = 124, f"timed out after {timeout:.0f} s: {e}"
        self.wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.load = (load, os.getloadavg()[0])

    def line(self) -> str:
        ok = "ok " if self.code == 0 else f"rc {self.code}"
        return (f"{ok:5} {self.wall:7.1f} s wall {self.cpu:7.1f} s CPU  load {self.load[0]:.1f}→{self.load[1]:.1f}  "
                f"{self.name}")

    def record(self) -> dict:
        return {"command": self.command, "wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1),
                "load": [round(x, 2) for x in self.load], "ok": self.code == 0, "failed": self.failed}


SELF_CHECK = "tests/test_readme.py::test_readme_times_are_what_the_walk_through_measured"


def tests_passed(s: Step) -> bool:
    """The test command passed, or failed only in the check of the README's times against the record
    that this measurement replaces (it reads the clone's old record, so cannot pass on the run that
    makes the new one when the old one is stale). The failures are kept in the record either way."""
    s.failed = re.findall(r"^FAILED (\S+)", s.out, re.M)
    return s.code == 0 or (s.code == 1 and bool(s.failed) and all(f == SELF_CHECK for f in s.failed))


def walk(args) -> tuple[list[Step], bool]:  # long: one walk through the README, block by block, in order
    """Every README block in order; returns the steps and whether all succeeded."""
    text = (ROOT / "README.md").read_text()
    blocks = readme_blocks(text)
    starts = [m.start() for m in BLOCK.finditer(text)]
    extra = text.find("pip install 'clamp[nnsight]'", text.find("## Your own model"))   # where the README says it
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        print("note: uncommitted changes are not in the clone:\n" + dirty, file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="clamp-newcomer-"))
    env = clean_env()
    steps: list[Step] = []

    def run(name: str, command: str, cwd: Path, timeout: float = 3600, expect=lambda s: s.code == 0) -> Step:
        s = Step(name, command, cwd, env, timeout)
        s.code = 0 if expect(s) else (s.code or 1)
        steps.append(s)
        print(s.line(), flush=True)
        if s.code != 0:
            print("   " + "\n   ".join(s.out.strip().splitlines()[-15:]), flush=True)
        return s

    print(f"{os.cpu_count()} cores; clones in {work}", flush=True)
    clones = {}
    for kind in ("setup-demo", "setup-test"):
        clones[kind] = work / kind
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clones[kind])], check=True)
    demo = clones["setup-demo"]
    act = ". .venv/bin/activate && "
    short = f" {SHORT}" if args.short else ""
    extra_done = False
    for at, (kind, margs, body) in zip(starts, blocks):
        skip = bool(args.only) and kind not in args.only
        if skip and (kind != "setup-demo" or set(args.only) <= {"setup-test"}):
            continue
        if extra >= 0 and at > extra and not extra_done and kind not in ("setup-demo", "setup-test"):
            extra_done = True                      # the README's "Your own model" asks for the nnsight extra
            run("install (nnsight extra)", act + "pip install -e '.[nnsight]'", demo)
        if kind == "setup-demo":                   # its install is the environment of every later block
            install, then = split_setup(body)
            if run("install (demo command)", install, demo).code == 0 and not skip:
                if not args.short:
                    run(then, act + then, demo)
                run("clamp demo --quick", act + "clamp demo --quick", demo)
        elif kind == "setup-test":
            install, then = split_setup(body)
            clone = clones["setup-test"]
            if run("install (test command)", install, clone).code == 0 and not args.no_tests:
                run(then, act + then, clone, expect=tests_passed)
        elif kind == "recipe":
            (demo / margs[0]).write_text(body)
            run(f"clamp plan {margs[0]}", act + f"clamp plan {margs[0]}", demo)
            run(f"clamp run {margs[0]}", act + f"clamp run {margs[0]} --quiet --out runs/nc-{margs[0]}{short}", demo)
        elif kind == "error":
            name, old, new = margs
            recipe = next(b for k, a, b in blocks if k == "recipe" and a[0] == name)
            (demo / "mistake").mkdir(exist_ok=True)
            (demo / "mistake" / name).write_text(recipe.replace(old, new, 1))
            shown = body.strip().split(" one of ")[0]                     # the lists of choices may grow
            run(f"error example ({name}: {new.strip()})", f". ../.venv/bin/activate && clamp plan {name}",
                demo / "mistake",
                expect=lambda s, shown=shown: s.code == 2 and s.out.strip().split(" one of ")[0] == shown)
        elif kind == "fragment":
            script = ("import sys, yaml; from clamp.recipe.overrides import deep_merge; "       # clamp's YAML reader
                      "from clamp.names.yamlio import load_yaml; read = lambda p: load_yaml(open(p).read())[0]; "
                      "yaml.safe_dump(deep_merge(read(sys.argv[1]), read(sys.argv[2])), open(sys.argv[3], 'w'))")
            i = sum(1 for s in steps if s.name.startswith("fragment"))
            (demo / f"fragment{i}.yaml").write_text(body)
            run(f"fragment {i} over {margs[0]}", act + f"python -c {shlex.quote(script)} {margs[0]} fragment{i}.yaml "
                f"merged{i}.yaml && clamp run merged{i}.yaml --quiet --out runs/nc-fragment{i}{short}", demo)
        elif kind == "suite":
            (demo / margs[0]).parent.mkdir(parents=True, exist_ok=True)
            (demo / margs[0]).write_text(body)
            run(f"clamp bench {margs[0]}", act + f"clamp bench {margs[0]} --quiet --fresh "
                f"--out runs/nc-{Path(margs[0]).stem}{short}", demo)
        elif kind == "python":
            i = sum(1 for s in steps if s.name.startswith("python block"))
            (demo / f"block{i}.py").write_text(body)
            run(f"python block {i}", act + f"python block{i}.py", demo)
    return steps, all(s.code == 0 for s in steps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="shorten recipe and suite runs (and the demo to --quick)")
    ap.add_argument("--no-tests", action="store_true", help="install with the test command, but do not run pytest")
    ap.add_argument("--record", action="store_true", help=f"write the set-up steps' times to {TIMES.name} (the "
                    "steps measured replace theirs; the others are kept)")
    ap.add_argument("--only", action="append", metavar="KIND", help="run only the blocks of this kind (setup-demo, "
                    "setup-test, recipe, error, fragment, suite, python); repeatable")
    args = ap.parse_args()
    t0 = time.perf_counter()
    steps, ok = walk(args)
    print(f"{'all ok' if ok else 'FAILED'}: {len(steps)} steps, {time.perf_counter() - t0:.0f} s")
    if args.record:
        blocks_ = ("clamp plan", "clamp run", "error", "fragment", "clamp bench", "python block")
        keep = {s.name: s.record() for s in steps if not s.name.startswith(blocks_)}
        keep["machine"] = {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                           "mode": "short" if args.short else "as written"}
        old = json.loads(TIMES.read_text()) if TIMES.exists() else {}
        TIMES.write_text(json.dumps({**old, **keep}, indent=1) + "\n")
        print(f"wrote {TIMES}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
