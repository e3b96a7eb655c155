"""The `clamp` command: the only place that prints.

Verbs: run, plan, sites, demo, bench, graph, explain, report. Exit codes: 0 success; 2 bad
input (one line naming file:line and key path, never a traceback); 1 anything else.
Set CLAMP_DEBUG=1 to see tracebacks of internal errors.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import console
from .analysis.report import table
from .console import VERBS, Progress, Started, build_parser, deleted  # noqa: F401 - VERBS: for scripts
from .names.errors import InputError, show


def _out(a, default: Path) -> Path:
    """--out as a path (default: `default`); a NUL byte or an empty string is bad input."""
    if a.out is None:
        return default
    if not a.out or "\x00" in a.out:
        raise InputError("--out", "", repr(a.out)[:60], "a directory path")
    return Path(a.out)


def _max_memory(a) -> float | None:
    from .recipe.budget import parse_size
    if a.max_memory is None:
        return None
    try:
        return parse_size(a.max_memory)
    except ValueError:
        raise InputError("--max-memory", "", repr(a.max_memory)[:60],
                         "a size like 16G, 512MiB or 2e9, or none") from None


def _failures(runs: Sequence[tuple[str, str | Path, dict]]) -> int:
    """Print one line per failed run (what, where the reason is) on stderr; exit code 1 if any or none ran."""
    from .store.rundir import RunDir
    bad = [(label, RunDir(d), sm) for label, d, sm in runs if sm.get("status") != "ok"]
    for label, rd, sm in bad:
        log = f", traceback in {rd.error_log}" if rd.error_log.exists() else ""
        sys.stderr.write(f"clamp: run {label} {sm.get('status', 'missing')}: {sm.get('error') or 'no summary.json'} "
                         f"(see {rd.summary_file}{log})\n")
    if not runs:
        sys.stderr.write("clamp: no run finished (no summary.json was written)\n")
    return 1 if bad or not runs else 0


def _sets(a) -> list[str | tuple[str, str]]:
    """--set overrides, with --device as train.device."""
    device = getattr(a, "device", None)
    return list(a.set) + ([(f"train.device={device}", f"--device {device}")] if device else [])


def cmd_run(a) -> int:
    from .recipe.spec import load_recipe
    from .training.runs import run
    recipe = load_recipe(a.recipe, _sets(a))
    from .store.rundir import default_dir
    out = _out(a, default_dir(recipe.name))
    prog = Progress(len(recipe.seeds), quiet=a.quiet)
    t0 = time.time()
    started = Started(deleted(prog))
    result = run(recipe, out, workers=a.workers, progress=started, fresh=a.fresh,
                 max_memory=_max_memory(a), ensemble=not a.no_ensemble)
    prog.close()
    rows = []
    cols = [(c, r) for c, rules in recipe.phases.items() for r in rules]
    for seed, sr in sorted(result.seeds.items()):
        ph = sr.summary.get("phases", {})
        rows.append([seed, sr.status] + [ph.get(c, {}).get(r, {}).get("step") for c, r in cols]
                    + [sr.summary.get("final", {}).get("loss"), sr.summary.get("wall_s")])
    print(table(["seed", "status"] + [f"{c} {r}" for c, r in cols] + ["final loss", "wall s"], rows))
    code = _failures([(f"seed {s}", sr.dir, sr.summary) for s, sr in sorted(result.seeds.items())]
                     + [(f"seed {s}", out, {"status": "missing"}) for s in recipe.seeds if s not in result.seeds])
    n_bad = sum(sr.status != "ok" for sr in result.seeds.values()) + len(set(recipe.seeds) - set(result.seeds))
    note = started.note(len(recipe.seeds))
    print(f"wrote {out}  ({time.time() - t0:.1f} s)" + (f"; {n_bad} of {len(recipe.seeds)} run(s) failed"
                                                        if n_bad else "") + (f"; {note}" if note else ""))
    return code


def cmd_plan(a) -> int:
    from .recipe.budget import check
    from .recipe.compile import compile_plan, probe_text
    from .recipe.spec import load_recipe
    from .store.rundir import run_metrics
    from .training.grouping import alone_because
    recipe = load_recipe(a.recipe, a.set)
    plan = compile_plan(recipe, metrics_of=run_metrics)
    est = check(recipe, _max_memory(a))
    print(plan.text())
    for name in recipe.probes:
        print(probe_text(recipe, name, metrics_of=run_metrics))
    why = alone_because(recipe)
    print(f"memory estimate per run: {est.text()}\nensembles: " + (f"each run trains alone: {why}" if why else
                                                                     "its runs can train together as one ensemble"))
    return 0


def cmd_sites(a) -> int:
    from .names.sites import catalogue
    from .recipe.spec import load_recipe
    recipe = load_recipe(a.recipe or _builtin("demo.yaml"), a.set)
    from .models.seam import site_sizes
    shape = recipe.shape()
    infos = catalogue(shape)
    sizes = site_sizes(shape)
    rows = [[i.name.replace(f"blocks.{i.layer}.", "blocks.{L}.") if i.layer is not None else i.name,
             i.kind, f"{shape.heads} heads" if i.per_head else "", i.shape,
             _sizes(sizes.get(i.name))]
            for i in infos if not i.name.startswith("module:")]
    raw = [[re.sub(r"\.\d+(?=\.)", ".{i}", i.name), i.kind, i.shape] for i in infos if i.name.startswith("module:")]
    print(f"model: {shape.family}, {shape.layers} layers (L = 0..{shape.layers - 1}), {shape.heads} heads, "
          f"d_model {shape.d_model}, d_head {shape.d_head}; head selections: name[3], name[0,2,4:8], name[*]")
    print(table(["name", "kind", "per head", "layout", f"sizes (layer {infos[0].layer or 0} where per layer)"],
                _unique(rows)))
    print("\nraw module sites ({i}: the index in a ModuleList; module:<path>.input|output|<parameter>):")
    print(table(["name", "kind", "module / shape"], _unique(raw)))
    return 0


def _sizes(sizes: tuple[int | None, ...] | None) -> str:
    return "?" if sizes is None else "[" + ", ".join("batch" if n is None else str(n) for n in sizes) + "]"


def _unique(rows: list[list[str]]) -> list[list[str]]:
    seen: set[str] = set()
    out = []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            out.append(r)
    return out


def _builtin(name: str) -> str:
    return str(Path(__file__).parent / "demo" / name)


QUICK_DEMO = ("task.offset=0", "train.steps=400", "train.lr=2e-3", "train.eval_every=25", "train.eval_size=100",
              "train.checkpoint_every=100")        # `clamp demo --quick`: the same comparison, shorter


def cmd_demo(a) -> int:
    import math

    from .analysis.report import curve_table, plot_curves, suite_curves, suite_text
    from .api import bench
    from .recipe.suite import load_suite
    suite = load_suite(_builtin("demo_suite.yaml"), [(s, "--quick") for s in QUICK_DEMO] if a.quick else ())
    out = _out(a, Path("runs/demo-quick" if a.quick else "runs/demo"))
    t = suite.base.train
    offset = suite.base.task.options.offset
    print(f"clamp demo{' --quick' if a.quick else ''}: the few-shot task of Singh et al. 2024 (2 layers, 8 heads"
          f"{'' if offset else '; prototypes without the offset, so a shorter plateau'}); plain training vs. "
          f"layer-1 head 3 clamped to the ideal induction pattern; {len(suite.seeds)} seeds each, "
          f"{t.steps} steps at lr {t.lr:g}", file=sys.stderr)
    t0 = time.time()
    prog = Progress(len(suite.runs()), quiet=a.quiet)
    workers = a.workers or (1 if a.quick else None)     # quick: one process, one ensemble (least CPU)
    res = bench(suite, out, workers=workers, progress=deleted(prog))
    prog.close()
    curves = suite_curves(res)
    at = ([0, 100, 250, 500, 750, 1000, 1500, 2000, t.steps] if not a.quick else
          list(range(0, t.steps, t.steps // 8)) + [t.steps])
    print("median train loss along training (ln 2 = 0.693 is the plateau of guessing between the two "
          "labels in context):")
    h, rows = curve_table(curves, at)
    print(table(h, rows))
    print()
    print(suite_text(res))
    from .store.owned import writer
    from .store.rundir import report_paths
    with writer(out, "suite", what=str(out)):
        png = plot_curves(curves, report_paths(out)[2], title="clamp demo: baseline vs. induction clamp",
                          hlines={"ln 2": math.log(2), "0.4·ln 2": 0.4 * math.log(2)})
    print(f"wrote {out} (results.csv, report.md, report.html, {png.name}, one directory per run)  "
          f"[{time.time() - t0:.0f} s wall]")
    return _suite_code(res)


def cmd_bench(a) -> int:
    from .analysis.report import suite_text
    from .api import bench
    from .recipe.suite import load_suite
    suite = load_suite(a.suite, _sets(a))
    from .store.rundir import default_dir
    out = _out(a, default_dir(suite.name))
    if a.backend == "ray":
        from .training.raybackend import require_ray
        require_ray()                                   # missing Ray is bad input: say so before anything runs
    t0 = time.time()
    prog = Progress(len(suite.runs()), quiet=a.quiet)
    started = Started(deleted(prog))
    res = bench(suite, out, workers=a.workers, backend=a.backend, address=a.address,
                progress=started, fresh=a.fresh, max_memory=_max_memory(a), ensemble=not a.no_ensemble)
    prog.close()
    print(suite_text(res))
    code = _suite_code(res)
    note = started.note(len(suite.runs()))
    print(f"wrote {out} (results.csv, report.md, report.html, loss_curves.png, one directory per run)  "
          f"[{time.time() - t0:.0f} s wall]" + (f"; {note}" if note else ""))
    return code


def _suite_code(res) -> int:
    """1 when a run failed or an expectation did not PASS (each said on stderr), else 0."""
    from .store.rundir import SuiteDir
    sd = SuiteDir(res.dir)
    code = _failures([(sd.label(r["run"], r["seed"]), sd.run(r["run"], int(r["seed"])).path,
                       {"status": r["status"], "error": r.get("error")}) for r in res.rows])
    for v in res.verdicts:
        if v["verdict"] != "PASS":
            sys.stderr.write(f"clamp: expectation {v['name']!r}: {v['verdict']}\n")
            code = 1
    return code


def cmd_probe(a) -> int:
    from .names.columns import is_probe_metric
    from .training.posthoc import probe_run, probes_output
    rows = probe_run(a.dir, a.probes)
    for seed, rs in sorted(rows.items()):
        cols = sorted({k for r in rs for k in r if is_probe_metric(k)})
        print(f"seed {seed}:")
        print(table(["step", "loss", "accuracy"] + cols,
                    [[r["step"], r.get("loss"), r.get("accuracy")] + [r.get(c) for c in cols] for r in rs]))
    print(f"wrote {probes_output(a.probes)} beside each seed's metrics.jsonl in {a.dir}")
    return 0


def _thresholds(items: list[str]) -> dict[str, float]:
    """--threshold ROLE=X ..., read as --set reads its overrides (the role is checked by discover)."""
    import math

    from .recipe.overrides import parse_override
    out = {}
    for item in items:
        role, eq, _ = item.partition("=")
        path, value = parse_override(item, "--threshold") if eq and role.strip() else ([], None)
        if len(path) != 1 or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise InputError("--threshold", "", repr(item)[:60], "ROLE=NUMBER, e.g. induction=0.3")
        out[str(path[0])] = float(value)
    return out


def cmd_discover(a) -> int:
    from .analysis.discovered import GRAPH_JSON, GRAPH_PNG, seed_text
    from .api import discover
    from .training.discover import DISCOVERY
    if a.run_suite and not a.suite:
        raise InputError("--run-suite", "", "no --suite", "--suite OUT.yaml (the suite to write and run)")
    got = discover(a.dir, thresholds=_thresholds(a.threshold), ablate=None if a.ablate == "none" else a.ablate,
                   suite=a.suite, graft=a.graft)
    for seed, d in sorted(got.seeds.items()):
        print(seed_text(seed, d))
    print(f"wrote {DISCOVERY}, {GRAPH_JSON} and {GRAPH_PNG} beside each seed's metrics.jsonl in {got.run}")
    if got.suite is None:
        return 0
    print(f"wrote {got.suite}; run it with clamp bench {got.suite}")
    for n in got.untested:
        print(f"  note: {n}")
    if not a.run_suite:
        return 0
    from .analysis.report import suite_text
    from .api import bench
    from .recipe.suite import load_suite
    from .store.rundir import default_dir
    suite = load_suite(got.suite)
    prog = Progress(len(suite.runs()))                  # on stderr, as `clamp bench` shows it
    res = bench(suite, default_dir(got.suite.stem), progress=deleted(prog))
    print(suite_text(res))
    print(f"wrote {default_dir(got.suite.stem)}; clamp explain {default_dir(got.suite.stem)} attributes the phase "
          "change to the discovered subcircuits")
    return _suite_code(res)


def cmd_prepare_text(a) -> int:
    from .api import prepare_text
    meta = prepare_text(a.sources, a.out, a.tokenizer)
    print(f"wrote {a.out}: {meta['tokens']:,} tokens ({meta['dtype']}, vocabulary {meta['vocab']:,}) from "
          f"{len(meta['sources'])} file(s); and {a.out}.json")
    return 0


def cmd_graph(a) -> int:
    from .analysis.explanations import effect_text
    from .analysis.graph import Graph
    g = Graph.from_runs(a.dir, behaviour=a.behaviour)
    paths = g.save(a.out or a.dir[0])
    subs = [n for n, d in g.g.nodes(data=True) if d["kind"] == "subcircuit"]
    print(f"{g.g.number_of_nodes()} nodes ({len(subs)} subcircuits), {g.g.number_of_edges()} edges")
    for x, y, d in g.g.edges(data=True):
        if d["kind"] == "effect" and d.get("condition") == "reference":
            w = f" with {', '.join(d['with'])}" if d["with"] else ""
            how = "; ".join(d.get("interventions") or [])
            print(f"  {x}{w} ({how}) -> {y}: {effect_text(d)} "
                  f"[{d['variant'].split('/', 1)[1]} vs {d['parent'].split('/', 1)[1]}]")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_explain(a) -> int:
    import json

    from .analysis import explanations as E
    from .analysis.graph import Graph
    g = Graph.from_runs(a.dir, behaviour=a.behaviour)
    if a.compare:
        res = E.compare(g, *a.compare)
        text = E.compare_text(res)
    elif a.predict:
        res = E.predict(g, a.predict.split(","), a.target)
        text = E.predict_text(res)
    else:
        res = E.explain(g, a.target)
        text = E.explain_text(res)
    print(json.dumps(res, indent=1, default=str) if a.json else text)
    return 0


def cmd_report(a) -> int:
    """`clamp report DIR`: re-render a suite's report.md, curves and report.html, or a run's."""
    from .analysis.htmlreport import plan_report, write_report
    from .analysis.report import plot_curves, run_curves, run_rows, suite_text, write_suite_report
    from .analysis.results import load_results
    from .store.owned import check_writable, writer
    from .store.rundir import SuiteDir, report_paths
    from .training.runs import Run
    d = Path(a.dir)
    if not d.is_dir():
        raise InputError(str(d), "", "no such directory", "a directory written by `clamp run` or `clamp bench`")
    check_writable(d, str(d))                          # a directory clamp did not make is neither read nor written
    heads = [_head_arg(h) for h in a.head]
    if SuiteDir.holds(d):
        res = load_results(d)
        plan = plan_report(d, a.column or None, heads or None, a.step or None, a.variant, a.seed)
        with writer(d, "suite", what=str(d)):
            paths = write_suite_report(res)
            paths.append(write_report(plan))
        print(suite_text(res))
        print("wrote " + ", ".join(map(str, paths)))
        return 0
    run = Run.load(d)
    if not run.seeds:
        raise InputError(str(d), "", "no run or suite here (no summary.json, no results.csv)",
                         "a directory written by `clamp run` or `clamp bench`")
    if a.variant is not None:
        raise InputError("--variant", "", show(a.variant), "no --variant for a run directory (it has no variants)")
    plan = plan_report(d, a.column or None, heads or None, a.step or None, None, a.seed)
    with writer(d, "run", what=str(d)):
        print(table(*run_rows(run)))
        png = plot_curves(run_curves(run), report_paths(d)[2], title=run.name)
        page = write_report(plan)
    print(f"wrote {png}, {page}")
    return 0


def _head_arg(text: str) -> tuple[int, int]:
    """`blocks.L.attn.hook_pattern[h]` → (L, h)."""
    from .names.sites import one_head
    got = one_head(text)
    if got is None or not got[0].endswith(".attn.hook_pattern"):
        raise InputError("--head", "", show(text), "a head as its pattern site, e.g. blocks.1.attn.hook_pattern[3]")
    return got[1], got[2]


def _load_plugins(entries: list[str]) -> None:
    """`--plugin` entries (a .py file or package directory, relative to the working directory, or an
    importable module name), imported before anything is read. Recipes that list them in `plugins:`
    carry them into their run directories; these do not, so a later verb needs the flag again."""
    from .models.plugins import is_path, load_plugin
    for entry in entries:
        try:
            load_plugin(os.path.abspath(entry) if is_path(entry) or os.path.exists(entry) else entry)
        except InputError as e:
            raise InputError("--plugin", "", show(entry), e.expected.replace("the recipe", "the working directory"),
                             e.hint) from None


def _skipped_note() -> None:
    """Say which plug-ins listed by a directory were not imported (nothing that was shown needed them)."""
    from .models.plugins import not_imported
    skipped = not_imported()
    if skipped:
        where = sorted(set(skipped.values()))
        sys.stderr.write(f"clamp: note: did not import {len(skipped)} plug-in(s) listed in {', '.join(where[:2])}"
                         f"{' and others' if len(where) > 2 else ''} ({', '.join(sorted(skipped)[:3])}): plug-ins "
                         "are code; nothing shown here needed them (--trust-plugins imports them)\n")


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "sites": cmd_sites, "demo": cmd_demo, "bench": cmd_bench,
            "discover": cmd_discover, "prepare-text": cmd_prepare_text,
            "probe": cmd_probe, "graph": cmd_graph, "explain": cmd_explain, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):            # names from odd paths never crash a print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")   # type: ignore[union-attr]
    try:
        console.ARGV = list(argv) if argv is not None else None
        args = build_parser(COMMANDS).parse_args(argv)
    except SystemExit as e:                            # bad arguments (one line written) or --help
        return e.code if isinstance(e.code, int) else 2
    try:
        from .models.plugins import forget_not_imported, trust_plugins
        trust_plugins(bool(getattr(args, "trust_plugins", False)))
        forget_not_imported()
        _load_plugins(getattr(args, "plugin", None) or [])
        code = args.fn(args)
        _skipped_note()
        return code
    except InputError as e:
        sys.stderr.write(f"clamp: error: {e}\n")
        return 2
    except BrokenPipeError:                            # `clamp plan | head`: the reader had enough
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("\nclamp: interrupted; run the same command again to resume\n")
        return 130
    except Exception as e:  # noqa: BLE001 - one line unless debugging
        if os.environ.get("CLAMP_DEBUG"):
            raise
        sys.stderr.write(f"clamp: internal error: {type(e).__name__}: {e} (set CLAMP_DEBUG=1 for a traceback)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
