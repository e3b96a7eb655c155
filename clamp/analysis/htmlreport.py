"""One self-contained HTML report of a run or a suite (`clamp report DIR`; `clamp bench` writes it).

Analysis layer, beside report.py (markdown and terminal tables) and draw.py (the graph picture).
It reads a run or suite directory, draws its pictures with matplotlib into DIR/report/*.png and
writes DIR/report.html with every picture embedded (data: URIs), so the file opens from disk with
no server and no other file. Sections:

- curves: one figure per column, one panel per variant, one line per seed (a colour per seed, the
  same in every panel); each intervention's windows shaded in the panel of the variant that
  applies it, and each seed's phase-change steps of that column marked (a dotted line and a dot);
- expectations (suites) with verdicts; phase-change times (median and range over seeds);
- attention heatmaps of chosen heads at chosen checkpoints, as the run saw them at that step (its
  interventions active then), on one sequence of the task's 'train' evaluator;
- the subcircuit graph (suites; draw.py), when the suite has variants that intervene.

The figure builders return matplotlib figures (tests read their lines and shaded spans).
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from ..measures import MEASURES
from ..names import columns as C
from ..names.errors import InputError, did_you_mean, show
from ..names.sites import one_head
from ..recipe.types import Recipe
from ..store.rundir import RecipeDir, RunDir, SuiteDir, list_checkpoints, report_paths
from .draw import save_figure
from .figures import Series, attention_figure, curve_figure
from .report import VERDICT_HEADERS, phase_table, timed_columns, verdict_rows


def default_columns(series: list[Series]) -> list[str]:
    """loss, accuracy, the other evaluators' loss, and every phase-rule column (in recipe order)."""
    out: list[str] = []
    have = {k for sr in series for rows in sr.rows.values() for r in rows[-1:] for k in r}
    for c in ["loss", "accuracy"] + sorted(k for k in have if k.startswith("loss/")):
        if c in have and c not in out:
            out.append(c)
    for sr in series:
        for c in sr.recipe.phases:
            if c not in out:
                out.append(c)
    return out


def check_columns(columns: list[str], series: list[Series]) -> None:
    have = {k for sr in series for rows in sr.rows.values() for r in rows for k in r}
    for c in columns:
        if not C.matching(c, have):
            plain = sorted(k for k in have if k not in ("step", "seed", "sequences"))
            raise InputError("--column", "", show(c), "a column of these runs' metrics (or max/min/mean(glob))",
                             did_you_mean(c, plain) or "columns: " + ", ".join(plain[:10]))


def default_heads(sr: Series) -> list[tuple[int, int]]:
    """The head a phase rule reads (the highest final value of a per-head rule's columns), else the
    highest-scoring head of each layer on any per-head attention measure measured, at most four."""
    last = next((rows[-1] for rows in sr.rows.values() if rows), {})
    out: list[tuple[int, int]] = []
    pattern = [m for m, cls in MEASURES.items() if (cls.head_site or "").endswith(".attn.hook_pattern")]
    cands = [c for c in sr.recipe.phases if any(m in c for m in pattern)]
    cands += [f"max({m}/{C.pattern_site(L)}[*])" for m in pattern if m in sr.recipe.measure
              for L in range(sr.recipe.model.layers)]
    for c in cands:
        cols = C.matching(c, set(last))
        if not cols:
            continue
        best = max(cols, key=lambda k: last[k])
        lh = _layer_head(best)
        if lh and lh not in out:
            out.append(lh)
    return out[:4] or [(L, 0) for L in range(min(sr.recipe.model.layers, 4))]


def _layer_head(column: str) -> tuple[int, int] | None:
    """(layer, head) of a per-head metric column `<measure>/<one head's site>`."""
    got = one_head(column.split("/", 1)[1]) if "/" in column else None
    return None if got is None else (got[1], got[2])


def default_steps(sr: Series, seed: int) -> list[int]:
    """The checkpoint at or before the seed's first phase change and the last one (or first and last)."""
    ck = [s for s, _ in list_checkpoints(sr.dirs[seed])]
    if not ck:
        return []
    first = min((st for rules in sr.phases.get(seed, {}).values() for st in rules.values() if st is not None),
                default=None)
    before = [s for s in ck if first is not None and s <= first]
    picks = [before[-1] if before else ck[0], ck[-1]]
    return sorted(set(picks))


def attention_panels(sr: Series, seed: int, heads: list[tuple[int, int]], steps: list[int]) -> list:
    """(title, pattern, labels) per (step, head), from the seed's checkpoints."""
    import torch

    from ..store.rundir import load_checkpoint
    from ..training.train import Trainer
    ck = dict(list_checkpoints(sr.dirs[seed]))
    trainer = Trainer(sr.recipe, seed, train=False)
    batch = trainer.task.evaluators(1)["train"]
    isv = batch.is_vector
    labels = ([str(int(t)) for t in batch.tokens[0]] if isv is None else
              [("x" if bool(v) else str(int(t))) for t, v in zip(batch.tokens[0], isv[0])])
    panels = []
    for step in steps:
        trainer.load_state(load_checkpoint(ck[step]))
        trainer.model.eval()
        iv = trainer.intervener
        iv.set_step(min(step, sr.recipe.train.steps - 1))
        layers = sorted({L for L, _ in heads})
        with torch.no_grad(), iv.recording([C.pattern_site(L) for L in layers]) as rec:
            iv.forward(batch)
        for L, h in heads:
            A = rec[C.pattern_site(L)][0, h].float().tolist()
            panels.append((f"{sr.name} seed {seed}\nL{L}H{h} at step {step}", A, labels))
    return panels


# ---------------------------------------------------------------------------------------
# The page


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(headers: list[str], rows: list[list], verdict_col: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            text = "-" if c is None or c == "" else (f"{c:.4g}" if isinstance(c, float) else str(c))
            cls = f' class="v-{text.lower()}"' if i == verdict_col else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em;
box-sizing:border-box}div.wide{max-width:100%;overflow-x:auto}th{overflow-wrap:anywhere}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.v-pass{background:#dff0d8}td.v-fail{background:#f8d7da}td.v-censored{background:#fff3cd}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}p.note{color:#555;font-size:0.9em}"""


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """(id, heading, inner HTML) per section → the whole document."""
    parts = [f'<section id="{sid}"><h2>{html.escape(head)}</h2>{inner}</section>' for sid, head, inner in sections]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")


def curves_section(series: list[Series], columns: list[str], out: Path) -> tuple[str, list[Path]]:
    imgs, paths = [], []
    for i, c in enumerate(columns):
        p = save_figure(curve_figure(series, c), out / f"curves_{i:02d}.png", laid_out=True)
        paths.append(p)
        imgs.append(f"<h3>{html.escape(c)}</h3>" + _img(p, f"curves of {c}"))
    note = ("<p class='note'>One panel per variant, one line per seed (seed colours are the same in every "
            "panel). Shaded: the steps an intervention is active (half-open windows). Dotted line and dot: "
            "the step a seed's phase rule on this column fired; a seed without one did not change.</p>")
    return note + "".join(imgs), paths


def pattern_layers(recipe: Recipe) -> set[int]:
    """The layers whose attention pattern the model exposes (a model's adapter may name none)."""
    from ..names.sites import catalogue
    return {i.layer for i in catalogue(recipe.shape()) if i.name.endswith(".attn.hook_pattern") and i.layer is not None}


def attention_section(sr: Series, seed: int, heads, steps, out: Path) -> tuple[str, list[Path]]:
    have = pattern_layers(sr.recipe)
    if not have:
        return ("<p class='note'>No heatmaps: this model exposes no attention patterns (its adapter names no "
                "pattern operation).</p>", [])
    heads = [(L, h) for L, h in heads if L in have]
    panels = attention_panels(sr, seed, heads, steps)
    if not panels:
        return "<p class='note'>No checkpoints to read attention from.</p>", []
    p = save_figure(attention_figure(panels), out / "attention.png")
    note = (f"<p class='note'>Attention of {', '.join(f'L{L}H{h}' for L, h in heads)} in {html.escape(sr.name)} "
            f"seed {seed} at steps {', '.join(map(str, steps))} (the checkpoint at or before the first phase change, "
            "and the last), on the first sequence of the task's train evaluator, as the run saw it at that step "
            "(its interventions active then). Rows are queries, columns keys; axis labels are the tokens "
            "(x: a vector position).</p>")
    return note + _img(p, "attention heatmaps"), [p]


# ---------------------------------------------------------------------------------------
# Runs and suites


def run_series(d: Path) -> list[Series]:
    from ..training.runs import Run
    run = Run.load(d)
    if not run.seeds:
        raise InputError(str(d), "", "no run or suite here (no summary.json, no results.csv)",
                         "a directory written by `clamp run` or `clamp bench`")
    sr = Series(run.name, RecipeDir(d).recipe())
    for s, seed_run in sorted(run.seeds.items()):
        sr.dirs[s], sr.rows[s] = seed_run.dir, seed_run.metrics
        sr.phases[s] = _steps(seed_run.summary)
        sr.summaries[s] = seed_run.summary
    return [sr]


def _steps(summary: dict) -> dict[str, dict]:
    """{column: {rule: step or None}} of a run's summary.json."""
    return {col: {rule: v.get("step") for rule, v in rules.items() if isinstance(v, dict)}
            for col, rules in (summary.get("phases") or {}).items() if isinstance(rules, dict)}


def suite_series(res) -> list[Series]:
    from ..recipe.suite import run_id
    out = []
    for (variant, point), recipe in res.suite.recipes.items():
        rid = run_id(variant, point)
        label = variant + (" [" + ", ".join(f"{k}={v}" for k, v in point) + "]" if point else "")
        sr = Series(label, recipe)
        for r in res.rows:
            if r["run"] != rid or r["status"] != "ok":
                continue
            s = int(r["seed"])
            rd = SuiteDir(res.dir).run(rid, s)
            sr.dirs[s], sr.rows[s] = rd.path, rd.metrics()
            sr.phases[s] = _steps(rd.summary() or {})
        if sr.rows:
            out.append(sr)
    return out


@dataclass
class ReportPlan:
    """What `write_report` will draw, checked against the directory before anything is written."""

    dir: Path
    title: str
    series: list[Series]
    columns: list[str]
    pick: Series                      # the variant whose attention is drawn
    seed: int
    heads: list[tuple[int, int]]
    steps: list[int]
    res: object = None                # results.SuiteResult of a suite, None for a run


def plan_report(directory: str | Path, columns: list[str] | None = None, heads: list[tuple[int, int]] | None = None,
                steps: list[int] | None = None, variant: str | None = None, seed: int | None = None) -> ReportPlan:
    """Read a run or suite directory and check the choices (InputError, nothing written)."""
    d = Path(directory)
    res = None
    if SuiteDir.holds(d):
        from .results import load_results
        res = load_results(d)
        series = suite_series(res)
        title = f"clamp report: suite {res.suite.name}"
    else:
        series = run_series(d)
        title = f"clamp report: run {series[0].name}"
    if not series:
        raise InputError(str(d), "", "a suite without finished runs", "a suite with at least one run that finished")
    cols = columns or default_columns(series)
    check_columns(cols, series)
    pick = series[0]
    if variant is not None:
        names = [sr.name for sr in series]
        if variant not in names:
            raise InputError("--variant", "", show(variant), "a variant of this suite: " + ", ".join(names),
                             did_you_mean(variant, names))
        pick = series[names.index(variant)]
    s = seed if seed is not None else min(pick.rows)
    if s not in pick.rows:
        raise InputError("--seed", "", str(s), "a seed of this run: " + ", ".join(map(str, sorted(pick.rows))))
    shape = pick.recipe.model
    if heads and not pattern_layers(pick.recipe):
        raise InputError("--head", "", f"L{heads[0][0]}H{heads[0][1]}", "no --head: this model has no attention "
                         "patterns (its adapter names no pattern operation)")
    for L, h in heads or ():
        if not (0 <= L < shape.layers and 0 <= h < shape.heads):
            raise InputError("--head", "", f"L{L}H{h}", f"a head of this model: layers 0..{shape.layers - 1}, "
                             f"heads 0..{shape.heads - 1}")
    ck = sorted(st for st, _ in list_checkpoints(pick.dirs[s]))
    for st in steps or ():
        if st not in ck:
            raise InputError("--step", "", str(st), "a checkpoint step of this run: " + ", ".join(map(str, ck)))
    return ReportPlan(d, title, series, cols, pick, s, heads or default_heads(pick), steps or default_steps(pick, s),
                      res)


def write_report(directory: str | Path | ReportPlan, columns: list[str] | None = None,
                 heads: list[tuple[int, int]] | None = None, steps: list[int] | None = None,
                 variant: str | None = None, seed: int | None = None) -> Path:
    """DIR/report.html and the PNGs it embeds (DIR/report/); returns the HTML's path. The caller holds
    the directory's writer lock (or it is taken here)."""
    from ..store.owned import writer
    rp = (directory if isinstance(directory, ReportPlan)
          else plan_report(directory, columns, heads, steps, variant, seed))
    with writer(rp.dir, None, what=str(rp.dir)):
        return _write_report(rp)


def _write_report(rp: ReportPlan) -> Path:
    from ..store.files import atomic_write
    from ..store.owned import make_dir, remove
    d, res, series = rp.dir, rp.res, rp.series
    html_path, pictures, _ = report_paths(d)
    out = make_dir(pictures)
    for old in out.glob("*.png"):             # pictures of an earlier report with other choices
        remove(old)
    sections = []
    if res is not None:
        s0 = res.suite                                                        # type: ignore[attr-defined]
        sections.append(("overview", "Overview", f"<p>{len(res.rows)} runs: {len(s0.recipes)} variant(s) × "  # type: ignore[attr-defined]
                         f"{len(s0.seeds)} seeds; task {html.escape(s0.base.task.name)}, {s0.base.train.steps} steps, "
                         f"{html.escape(s0.base.train.optimizer)} lr {s0.base.train.lr:g}, "
                         f"batch {s0.base.train.batch}.</p>"))
        if res.verdicts:                                                      # type: ignore[attr-defined]
            notes = "".join(f"<li>{html.escape(v['name'])}: {html.escape(v['note'])}</li>"
                            for v in res.verdicts if v.get("note"))              # type: ignore[attr-defined]
            sections.append(("expectations", "Expectations",
                             _table(VERDICT_HEADERS, verdict_rows(res.verdicts), 7)  # type: ignore[attr-defined]
                             + (f"<p class='note'>Censored, untested and missing data:</p><ul>{notes}</ul>"
                                if notes else "")))
        h, rows = phase_table(res.rows, timed_columns(res.suite))            # type: ignore[attr-defined]
        sections.append(("phases", "Phase-change times", _table(h, rows)))
        failed = [[r["run"], r["seed"], r["status"], r.get("error") or "no summary.json was written",
                   str(SuiteDir(d).run(r["run"], int(r["seed"])).summary_file)]
                  for r in res.rows if r["status"] != "ok"]                   # type: ignore[attr-defined]
    else:
        sr = series[0]
        rows = [[s2, ", ".join(f"{c} {r}: {st if st is not None else 'none'}" for c, rr in sr.phases[s2].items()
                                for r, st in rr.items()) or "no phase rules"] for s2 in sorted(sr.rows)]
        sections.append(("phases", "Phase-change times", _table(["seed", "phase changes (step; none: never)"], rows)))
        failed = [[sr.name, s2, sm.get("status", "missing"), sm.get("error") or "no summary.json was written",
                   str(RunDir(sr.dirs[s2]).summary_file)]
                  for s2, sm in sorted(sr.summaries.items()) if sm.get("status") != "ok"]
    if failed:
        sections.append(("failed", "Runs that did not finish",
                         "<p class=\"note\">Their reason, and the summary.json that holds it (the traceback is in "
                         "error.log beside it).</p>" + _table(["run", "seed", "status", "reason", "summary"], failed)))
    inner, _ = curves_section(series, rp.columns, out)
    sections.append(("curves", "Curves", inner))
    inner, _ = attention_section(rp.pick, rp.seed, rp.heads, rp.steps, out)
    sections.append(("attention", "Attention patterns", inner))
    if res is not None:
        sections.append(("graph", "Subcircuit graph", _graph_section(d, out, res.suite.base)))  # type: ignore[attr-defined]
    else:
        found = _discovered_section(series[0])
        if found:
            sections.append(("discovered", "Discovered heads", found))
    atomic_write(html_path, page(rp.title, sections))
    return html_path


def _graph_section(d: Path, out: Path, base: Recipe) -> str:
    from .graph import Graph
    first = next(iter(base.phases.items()), None)
    try:
        try:
            g = Graph.from_runs([str(d)])
            chosen = ""
        except InputError:          # variants time different phase rules: the base recipe's first one
            if first is None:
                raise
            chosen = f"{first[0]}:{next(iter(first[1]))}"
            g = Graph.from_runs([str(d)], behaviour=chosen)
    except InputError as e:
        return f"<p class='note'>No graph: {html.escape(str(e))}</p>"
    if not any(dd["kind"] == "effect" for _, _, dd in g.g.edges(data=True)):
        return ("<p class='note'>No graph: no variant of this suite intervenes on a subcircuit another variant "
                "leaves alone.</p>")
    p = g.draw(out / "graph.png")
    why = (f" The variants time different phase rules, so the graph times the base recipe's first: "
           f"{html.escape(chosen)}." if chosen else "")
    return ("<p class='note'>Each arrow: what intervening on a subcircuit (clamping, ablating or freezing it, as "
            "its label says) did to a phase change, paired by seed against the variant without that intervention "
            "(median ratio of phase-change steps over seeds; range in brackets)." + why + "</p>"
            + _img(p, "subcircuit graph"))


def _discovered_section(sr: Series) -> str:
    """What `clamp discover` found in each seed of a run ('' when it was not run): a table of the heads
    that hold a role at the end, and the picture of how they compose."""
    from ..store.files import read_json
    from .discovered import GRAPH_PNG
    parts = []
    for seed in sorted(sr.dirs):
        rd = RunDir(sr.dirs[seed])
        found = read_json(rd.discovery_file) if rd.discovery_file.is_file() else None
        if not isinstance(found, dict):
            continue
        cost = {k: v[-1] for k, v in found.get("effects", {}).get("heads", {}).items()}
        rows = [[h["name"], h["formed"], h["final"], cost.get(f"L{h['layer']}H{h['head']}")]
                for h in found.get("heads", []) if h.get("holds")]
        parts.append(f"<h3>seed {seed}</h3>" + _table(["head", "formed at step", "final score",
                                                       "loss +Δ when ablated (end)"], rows))
        png = rd.file(GRAPH_PNG)
        if png.is_file():
            parts.append(_img(png, f"discovered heads, seed {seed}"))
    if not parts:
        return ""
    return ("<p class='note'>From <code>clamp discover</code>: every head that holds a role at the end, the step it "
            "took the role (first evaluation above the role's threshold) and what ablating it costs; arrows: "
            "K/Q/V composition between them that rose along training.</p>" + "".join(parts))

