"""clamp's Python API: the functions a researcher calls, each composing the layers below.

Top layer (beside the CLI, which calls these and prints). `clamp/__init__.py` re-exports them.

    plan(recipe, seed)               the compiled timeline of a recipe (heads chosen from runs read here)
    run(recipe, out)                 train a recipe's seeds (runs.py)
    bench(suite, out)                run a suite, judge its expectations, write report.md and curves
    load_results(dir)                re-read a suite directory (results.py)
    Graph.from_runs(dirs)            the subcircuit graph of suite directories (graph.py)
    explain(graph, target)           isolated formation times and the bottleneck (explanations.py)
    compare(graph, a, b)             which subcircuits moved between two conditions
    predict(graph, variants, target) the phase change of an unrun combination of clamps
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.htmlreport import write_report
from .analysis.report import write_suite_report
from .analysis.results import SuiteResult, suite_result
from .recipe.compile import Plan, compile_plan
from .recipe.suite import Suite, load_suite
from .recipe.types import Recipe
from .store.rundir import default_dir, run_metrics
from .training.benches import run_suite


def plan(recipe: Recipe, seed: int | None = None) -> Plan:
    """The Plan of a recipe for one seed (default: its first), with heads that a subcircuit selects
    from another run's measures read from that run's metrics.jsonl."""
    return compile_plan(recipe, seed, metrics_of=run_metrics)


def bench(suite: str | os.PathLike | Suite, out: str | os.PathLike | None = None, *,
          workers: int | None = None, backend: str = "local", address: str | None = None,
          progress: Callable[[dict], None] | None = None, fresh: bool = False,
          max_memory: float | None = None, ensemble: bool = True) -> SuiteResult:
    """`clamp bench` from Python: run a suite (a path or a Suite) into `out` (default
    runs/<suite name>), resuming what is there; report.md is rewritten as each run finishes, and
    the loss curves and report.html (htmlreport.py) are written at the end. Runs that can share train
    as ensembles unless `ensemble` is
    False (ensemble.py). Returns the judged results."""
    s = suite if isinstance(suite, Suite) else load_suite(suite)
    d = Path(out) if out is not None else default_dir(s.name)

    def report(rows: list[dict]) -> None:
        write_suite_report(suite_result(s, d, rows), curves=False)
    rows = run_suite(s, d, workers=workers, backend=backend, address=address, progress=progress, fresh=fresh,
                     max_memory=max_memory, on_rows=report, ensemble=ensemble)
    res = suite_result(s, d, rows)
    write_suite_report(res)
    if any(r["status"] == "ok" for r in rows):
        write_report(d)
    return res


@dataclass
class Discovery:
    """What `discover` found: each seed's discovery (discovery.json's content), and the suite of
    isolation experiments written for it (None without `suite`) with what it could not test."""
    seeds: dict[int, dict]
    run: Path                                         # the run discovered
    suite: Path | None = None
    untested: list[str] = field(default_factory=list)


def discover(run_dir: str | os.PathLike, *, thresholds: dict[str, float] | None = None, ablate: str | None = "mean",
             suite: str | os.PathLike | None = None, graft: str = "missing",
             progress: Callable[[dict], None] | None = None) -> Discovery:
    """`clamp discover` from Python: every head's roles, formation times, ablation effects
    (`ablate`: mean, zero, resample; None: not measured) and composition, written beside each seed's
    metrics (discovery.json, discovery_graph.json, discovery.png); with `suite` (a path that does not
    exist yet), the suite of isolation experiments that tests it, checked before it is written
    (`graft`: which groups it also clamps to their activation at the baseline's last checkpoint:
    "missing", those whose role has no ideal pattern; "all"; "none").
    `run_dir` may be a recipe file instead: it is trained first into runs/<its name> (resuming what
    is there), and that run is discovered."""
    from .analysis.discovered import save
    from .names.errors import InputError
    from .names.yamlio import load_yaml
    from .recipe.suite import suite_from_data
    from .store.files import atomic_write
    from .training.discover import discover as find
    from .training.isolation import GRAFTS, isolation_suite, suite_yaml
    if graft not in GRAFTS:
        raise InputError("graft", "", repr(graft)[:60], "one of " + ", ".join(GRAFTS))
    target = Path(suite) if suite is not None else None
    if target is not None and (target.exists() or not target.parent.is_dir()):
        raise InputError("--suite", "", repr(str(target))[:80], "a new file in an existing directory (clamp "
                         "never replaces a file it did not write)", "choose another name, or delete that file first")
    if Path(run_dir).is_file():                       # a recipe: its baseline run first
        from .recipe.spec import load_recipe
        from .training.runs import run
        recipe = load_recipe(run_dir)
        if recipe.train.checkpoint_every <= 0:
            raise InputError(str(run_dir), "train.checkpoint_every", str(recipe.train.checkpoint_every),
                             "checkpoints to discover from", "add train.checkpoint_every (e.g. a tenth of the steps)")
        run_dir = default_dir(recipe.name)
        run(recipe, run_dir, progress=progress)
    found = find(run_dir, thresholds, progress, effects=ablate)
    for d in found.values():
        save(Path(d["run"]), d)
    out = Discovery(found, Path(run_dir))
    if target is not None:
        data, notes = isolation_suite(run_dir, found, target.stem, graft)
        text = suite_yaml(data, notes, run_dir)
        loaded, src = load_yaml(text, str(target))
        suite_from_data(loaded, src, default_name=target.stem)               # checked before it is written
        atomic_write(target, text)
        out.suite, out.untested = target, notes
    return out



def prepare_text(sources: list[str | os.PathLike], out: str | os.PathLike, tokenizer: str = "bytes") -> dict:
    """Encode text files (or directories of them) into a token file for `task: {name: text}`: `out`
    (a new .bin file: flat uint16 ids, uint32 where the vocabulary needs it) and `out`.json beside it
    (dtype, vocabulary, tokenizer, sources, token count). Returns that .json's content."""
    import json

    from .names.errors import InputError
    from .store.files import atomic_save, atomic_write
    from .tasks.text import TEXT_SUFFIXES, encode, meta_path, text_files
    target = Path(out)
    if target.suffix != ".bin":
        raise InputError("--out", "", repr(str(target))[:80], "a .bin file name (the text task reads .bin as tokens)")
    for t in (target, meta_path(target)):
        if t.exists() or not t.parent.is_dir():
            raise InputError("--out", "", repr(str(t))[:80], "a new file in an existing directory (clamp never "
                             "replaces a file it did not write)", "choose another name, or delete that file first")
    files = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise InputError(str(src), "", "no such file or directory", "text files or directories of them")
        files += text_files(p, TEXT_SUFFIXES)
    if not files:
        raise InputError("sources", "", ", ".join(map(str, sources))[:80], "at least one text file "
                         f"({', '.join(TEXT_SUFFIXES)})")
    try:
        tokens, vocab = encode(files, tokenizer)
    except ValueError as e:
        raise InputError("--tokenizer", "", repr(tokenizer)[:80], "'bytes' or a saved tokenizer directory",
                         str(e)) from e
    if len(tokens) == 0:
        raise InputError("sources", "", "empty text", "files with some text")
    meta = {"dtype": str(tokens.dtype), "vocab": vocab, "tokenizer": tokenizer, "tokens": int(len(tokens)),
            "sources": [str(f) for f in files]}
    atomic_save(target, lambda tmp: tokens.tofile(tmp))
    atomic_write(meta_path(target), json.dumps(meta, indent=1) + "\n")
    return meta
