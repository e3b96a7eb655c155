"""Hostile input at the CLI boundary: `main(argv)` in this process, driven by hypothesis.

Every case is a recipe or suite file (a valid one mutated structurally, or its text mutated
byte-wise into the hostile shapes found before: non-UTF-8 bytes, deep nesting, tags, aliases, merge
keys, huge numbers, long keys, control characters), odd paths (missing, a directory, a FIFO,
/dev/zero, NUL bytes) and odd arguments (`--set`, `--out`, `--max-memory`), given to `clamp plan`,
`clamp run` or `clamp bench` with a memory limit of one byte (so nothing valid ever trains: a valid
input is refused at the budget check, after everything else was checked). Each must end with exit
0 or 2, one line of at most ~300 characters on stderr, no traceback, no "internal error", within a
few seconds.

A fixed sample runs by default (CI); `CLAMP_FUZZ_EXAMPLES=10000 python -m pytest -k cli_fuzz -s`
explores at random and prints the exit-code histogram, the slowest case and the peak memory.
"""
from __future__ import annotations

import collections
import os
import resource
import time
import types

from fuzzing import mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clamp.cli import main
from clamp.names.yamlio import dump_yaml, load_yaml

N = int(os.environ.get("CLAMP_FUZZ_EXAMPLES", 120))
STATS: dict = {"codes": collections.Counter(), "slowest": (0.0, ""), "cases": 0}

RECIPE = """\
name: fz
seeds: [0, 1]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 30, batch: 8, lr: 1.0e-2, eval_every: 10, eval_size: 16, stop: {loss: {below: 0.01}}}
subcircuits:
  prev: {sites: [blocks.0.attn.hook_pattern[1]], params: [blocks.0.attn.W_Q[1]]}
  heads: {sites: [blocks.0.attn.hook_z], select: {layer: 0, by: prev_token_score, top: 1}}
interventions:
  - {clamp: prev, to: previous_token, strength: 0.9, rows: label, steps: [0, 20]}
  - {freeze: prev, steps: [[0, 5], [10, end]], optimizer_state: accumulate}
  - {ablate: 'blocks.1.attn.hook_z[0,2:4]', how: mean, preserve: [patterns]}
probes:
  p: [{ablate: heads}]
measure: [loss, accuracy, prev_token_score, induction_strength]
phases:
  loss: {below: 0.3, relative: {frac: 0.5, flat: 0.1}}
  max(prev_token_score/blocks.0.attn.hook_pattern[*]): {above: 0.5}
"""
SUITE = """\
name: fs
base: r.yaml
seeds: [0, 1]
variants:
  base: {}
  lr: {train.lr: 0.02}
  other: {recipe: r.yaml, task.labels: 3}
grid: {train.batch: [4, 8]}
expect:
  - {ratio: [lr, base], of: crossing, below: 1.0}
  - {difference: [{variant: other, of: "final:loss"}, {variant: base, of: "final:loss"}], abs: true, below: 1}
"""

HOSTILE_TEXT = [
    "\xff", "\x00", "\x1b[31m", "!!python/object/apply:os.system ['true']", "!foo", "!!binary aGk=",
    "&a [*a]", "<<: {steps: 1}", "[" * 200 + "]" * 200, "{" * 100 + "}" * 100, "9" * 4400, "1e999", "-.inf",
    ".nan", "k" * 5000, "? [a, b]\n: 1", "'''", "\t", "\u202e", "0x" + "f" * 40, "2024-01-01", "~",
    "*undefined", "%YAML 1.1\n---", "---\n---", "... ", "\r\n", "&x a\nb: *x",
]


TEXT = st.characters(blacklist_categories=("Cs",))          # no lone surrogates: bytes come separately


@st.composite
def recipe_text(draw):
    """A recipe (or suite) as text: a valid one mutated structurally or byte-wise."""
    suite = draw(st.booleans())
    text = SUITE if suite else RECIPE
    how = draw(st.sampled_from(["structure", "structure", "text", "both", "none"]))
    if how in ("structure", "both"):
        doc, _ = load_yaml(text)
        mutate(doc, types.SimpleNamespace(draw=draw))
        text = dump_yaml(doc)
    if how in ("text", "both"):
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            piece = draw(st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(TEXT, max_size=20)))
            text = text[:at] + piece + text[at:]
    raw = text.encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 9)) == 0:                        # a stray byte that is not UTF-8
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(0x80, 0xff))]) + raw[at:]
    return suite, raw


set_value = st.one_of(st.sampled_from([
    "train.lr=fast", "train.steps=1e12", "train.steps=1000000000000", "model.layers=2147483648",
    "train.batch=1000000000", "model.d_model=1000000", "task.classes=1000000000", "train.eval_size=1000000000",
    "interventions=[{ablate: hook_logits}]", "name=../../x", "name=/abs", "seeds=[]", "seeds=[1, 1]",
    "phases={nope: {below: 1}}", "train.stop={induction_score: {above: 1}}", "a." + "9" * 3000 + "=1",
    "train.lr=!!python/name:os.system", "model=&a [*a]", "=1", "train..lr=1", "train.lr", "\x00=1",
    "interventions.0.rows=labels", "interventions.7.steps=[0, 1]", "train.betas=[2, -1]"]),
    st.builds(lambda k, v: f"{k}={v}", st.text(TEXT, max_size=15), st.text(TEXT, max_size=15)))


def _paths(tmp):
    fifo = tmp / "fifo.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)
    return [str(tmp / "missing.yaml"), str(tmp), str(fifo), "/dev/zero", "/dev/null", "a\x00b", "",
            str(tmp / "r.yaml") + "/x"]


@settings(max_examples=N, deadline=None, derandomize="CLAMP_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cli_fuzz_hostile_input_exits_0_or_2_with_one_line(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("fz")
    suite, raw = data.draw(recipe_text())
    (tmp / "r.yaml").write_text(RECIPE)
    f = tmp / ("s.yaml" if suite else "case.yaml")
    f.write_bytes(raw)
    if data.draw(st.integers(0, 9)) == 0:
        f = data.draw(st.sampled_from(_paths(tmp)))
    verb = "bench" if suite else data.draw(st.sampled_from(["plan", "run"]))
    argv = [verb, str(f)]
    if verb in ("run", "bench"):
        out = data.draw(st.sampled_from([str(tmp / "out"), str(tmp / "out"), "/", str(tmp / "r.yaml"), "a\x00b",
                                         str(tmp)]))
        argv += ["--out", out, "--quiet"] + (["--fresh"] if data.draw(st.booleans()) else [])
    limits = ["1", "1", "1", "0", "lots", "-5", "1e999"] + (["none", "8G", "none"] if verb == "plan" else [])
    argv += ["--max-memory", data.draw(st.sampled_from(limits))]
    for _ in range(data.draw(st.sampled_from([0, 0, 0, 1, 2]))):
        argv += ["--set", data.draw(set_value)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    code = main(argv)
    took = time.perf_counter() - t0
    out, err = capsys.readouterr()
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    STATS["codes"][code] += 1
    STATS.setdefault("messages", collections.Counter())[err.split("found", 1)[-1][:40]] += 1
    STATS["cases"] += 1
    STATS["peak_kib"] = max(STATS.get("peak_kib", 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    if took > STATS["slowest"][0]:
        STATS["slowest"] = (took, repr(argv)[:200])
    assert code in (0, 2), (argv, code, err)
    assert "internal error" not in err and "Traceback" not in err, (argv, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) <= 320, (argv, err)
    assert took < 30, (argv, took)
    assert grew < 1024 * 1024, (argv, grew)                  # KiB: no case takes a GiB
    assert not (tmp / "out").exists() or code == 0, (argv, sorted(p.name for p in (tmp / "out").iterdir()))


def test_cli_fuzz_report():
    """Prints what the fuzz test saw (run it with -s after the fuzz test)."""
    if STATS["cases"]:
        print(f"\nCLI fuzz: {STATS['cases']} cases; exit codes {dict(STATS['codes'])}; slowest "
              f"{STATS['slowest'][0]:.2f} s ({STATS['slowest'][1]}); peak RSS {STATS['peak_kib'] / 1024:.0f} MiB")
        if os.environ.get("CLAMP_FUZZ_VERBOSE"):
            for m, n in STATS["messages"].most_common(40):
                print(f"  {n:5d}  found{m}")


# ---------------------------------------------------------------------------------------
# Suites whose bad value sits in `set:`, on `--set`, in a variant or a grid: the error names the place

LOCATED_BASE = """\
name: lb
seeds: [0]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 12, batch: 8, lr: 0.01, eval_every: 4, eval_size: 16}
measure: [loss, accuracy]
"""
LOCATED_KEYS = ["train.lr", "train.batch", "train.optimizer", "train.betas", "train.eval_size", "model.layers",
                "model.norm", "model.pos", "task.labels", "task.classes", "task.dim", "measure", "seeds",
                "train.nope", "model.nope", "nope", "task.name"]
located_value = st.one_of(st.integers(-5, 10**7), st.floats(allow_nan=False), st.text(TEXT, max_size=8),
                          st.sampled_from([None, True, [], {}, [1, 2, 3], {"a": 1}, "adam", "pre", "rope", -0.5]))


def _flow(value) -> str:
    """A value as one line of YAML (JSON is YAML)."""
    import json
    return json.dumps(value, ensure_ascii=True)


STATS_LOCATED: dict = {"cases": 0, "checked": collections.Counter(), "codes": collections.Counter()}


@settings(max_examples=N, deadline=None, derandomize="CLAMP_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cli_fuzz_errors_are_located_where_the_value_was_written(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("loc")
    key = data.draw(st.sampled_from(LOCATED_KEYS))
    value = data.draw(located_value)
    place = data.draw(st.sampled_from(["set", "flag", "variant_path", "variant_nested", "grid", "base"]))
    base = LOCATED_BASE
    lines = ["name: ls", "base: b.yaml"]
    extra: list[str] = []
    entry = f"{key}={_flow(value)}"
    if place == "set":
        lines += ["set:", "  - train.eval_every=4", f"  - {_flow(entry)}"]
        expect = f"{tmp / 's.yaml'}:{len(lines)}: set[1]"
    lines += ["variants:", "  base: {}"]
    if place == "variant_path":
        lines.append(f"  v: {{{_flow(key)}: {_flow(value)}}}")
        expect = f"{tmp / 's.yaml'}:{len(lines)}: variants.v"
    elif place == "variant_nested":
        node = value
        for part in reversed(key.split(".")):
            node = {part: node}
        lines.append(f"  v: {_flow(node)}")
        expect = f"{tmp / 's.yaml'}:{len(lines)}: variants.v"
    else:
        lines.append("  v: {train.eval_size: 16}")
    if place == "grid":
        lines += ["grid:", f"  {_flow(key)}: [{_flow(value)}]"]
        expect = f"{tmp / 's.yaml'}:{len(lines)}: grid"
    if place == "flag":
        extra = ["--set", entry]
        expect = f"--set {entry}"
    if place == "base":
        top, _, rest = key.partition(".")
        doc, _ = load_yaml(LOCATED_BASE)
        section = {**(doc.get(top) or {}), rest: value} if rest and isinstance(doc.get(top), dict) else \
            ({rest: value} if rest else value)
        blines = [ln for ln in LOCATED_BASE.splitlines() if not ln.startswith(f"{top}:")]
        blines.append(f"{top}: {_flow(section)}")
        base = "\n".join(blines) + "\n"
        expect = f"{tmp / 'b.yaml'}:{len(blines)}"
    (tmp / "b.yaml").write_text(base)
    (tmp / "s.yaml").write_text("\n".join(lines) + "\n")
    argv = ["bench", str(tmp / "s.yaml"), "--out", str(tmp / "out"), "--max-memory", "1", *extra]
    code = main(argv)
    _, err = capsys.readouterr()
    STATS_LOCATED["cases"] += 1
    STATS_LOCATED["codes"][code] += 1
    assert code in (0, 2), (argv, err)
    assert "internal error" not in err and "Traceback" not in err, (argv, err)
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp / "out").exists()
    line = err.strip().removeprefix("clamp: error: ")
    if "memory" in line and "expected at most" in line:           # a valid value: refused only by the memory limit
        return
    from clamp.names.errors import format_path
    from clamp.names.yamlio import parse_key_path
    shown = format_path(parse_key_path(key, ""))
    at = line.split(": found", 1)[0]
    if at.endswith(shown) or f"{shown}." in at or f"{shown}[" in at or (
            shown.split(".")[0] == at.rsplit(": ", 1)[-1] and "unknown key" in line):
        STATS_LOCATED["checked"][place] += 1
        assert line.startswith(expect), (place, key, value, line, expect)


def test_cli_fuzz_located_report():
    """Prints what the located-error fuzz test checked (run with -s after it)."""
    if STATS_LOCATED["cases"]:
        print(f"\nlocated-error fuzz: {STATS_LOCATED['cases']} cases, exit codes {dict(STATS_LOCATED['codes'])}; "
              f"errors whose key path is the value's, location checked: {dict(STATS_LOCATED['checked'])}")
