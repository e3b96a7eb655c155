"""Tables and plots for runs and suites (the last stage of the flow).

Analysis layer. Renders results (results.SuiteResult, runs.Run) as report.md, text for the
terminal, and PNG loss curves. Nothing here trains or changes a run, and nothing prints:
the CLI prints what these functions return.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from ..names import columns as C
from ..names.phases import spread
from ..store.files import atomic_write
from ..store.owned import writer
from ..store.rundir import SuiteDir, report_paths
from .draw import save_figure


def _f(v, digits: int = 4) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def md_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def crossing_columns(rows: list[dict]) -> list[str]:
    return sorted({k for r in rows for k in r if C.is_crossing(k)})


def timed_columns(suite) -> dict[str, set[str]]:
    """run id → the crossing columns its recipe's phase rules time."""
    from ..recipe.suite import run_id
    return {run_id(v, point): {C.crossing_column(col, rule) for col, rules in r.phases.items() for rule in rules}
            for (v, point), r in suite.recipes.items()}


def phase_table(rows: list[dict], timed: dict[str, set[str]] | None = None) -> tuple[list[str], list[list]]:
    """Per variant (and grid point): median and range over seeds of each crossing column; with `timed`
    (timed_columns), a column a variant's recipe has no rule for reads 'not timed', not 'none'."""
    cols = crossing_columns(rows)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r.get("grid", "")), []).append(r)
    out = []
    for (variant, grid), rs in groups.items():
        line = [variant + (f" [{grid}]" if grid else ""), f"{sum(r['status'] == 'ok' for r in rs)}/{len(rs)}"]
        for c in cols:
            if timed is not None and c not in timed.get(rs[0]["run"], {c}):
                line.append("not timed (no such rule in this variant)")
                continue
            vals = [r.get(c) for r in rs if r["status"] == "ok"]
            got = [v for v in vals if v not in (None, "")]
            never = len(vals) - len(got)
            if got:
                sp = spread(got)
                cell = f"{sp['median']:g} ({sp['min']:g}–{sp['max']:g})"
            else:
                cell = "none"
            if never:
                cell += f", {never} of {len(vals)} none" if got else f" ({never} of {len(vals)} seeds: no phase change)"
            line.append(cell)
        out.append(line)
    return ["variant", "ok"] + [c.removeprefix("crossing:") + " step: median (range)" for c in cols], out


def verdict_rows(verdicts: list[dict]) -> list[list]:
    rows = []
    for v in verdicts:
        rng = "-" if v["median"] is None else f"{v['min']:.3g}–{v['max']:.3g}"
        cens = sum(p["censored"] for p in v["per_seed"])
        med = v["median"]
        if cens and med is not None:
            lo, hi = v["median_range"]
            med = f"{med:.4g} (in [{lo:.3g}, {'∞' if hi == float('inf') else f'{hi:.3g}'}])"
        rows.append([v["name"], v["statistic"], v["rule"],
                     med, rng, f"{v['n']}" + (f" ({cens} censored)" if cens else ""),
                     None if v.get("p") is None else f"{v['p']:.3g}", v["verdict"]])
    return rows


VERDICT_HEADERS = ["expectation", "statistic (paired by seed)", "rule", "median", "range", "n",
                   "sign test p", "verdict"]


def suite_markdown(res) -> str:
    s = res.suite
    lines = [f"# Suite {s.name}", "",
             f"{len(res.rows)} runs: {len(s.recipes)} variant/grid point(s) × {len(s.seeds)} seeds "
             f"({', '.join(map(str, s.seeds))}); base: {s.base.task.name}, {s.base.train.steps} steps, "
             f"{s.base.train.optimizer} lr {s.base.train.lr:g}, batch {s.base.train.batch}.", ""]
    if res.verdicts:
        lines += ["## Expectations", "",
                  "Each statistic is computed per seed (same init and data stream) and summarised over seeds; "
                  "a phase change that never happened counts as the run length (censored: the true time is "
                  "at least that), so a statistic that uses one is only known to lie in a range. A verdict is "
                  "PASS or FAIL only when it holds whatever the censored times really are; otherwise it is "
                  "CENSORED (undecided). The sign test counts the seeds that decide the rule.", "",
                  md_table(VERDICT_HEADERS, verdict_rows(res.verdicts)), ""]
        notes = [f"- {v['name']}: {v['note']}" for v in res.verdicts if v.get("note")]
        if notes:
            lines += ["Censored, untested and missing data:", ""] + notes + [""]
    h, rows = phase_table(res.rows, timed_columns(res.suite))
    lines += ["## Phase-change times", "", md_table(h, rows), ""]
    bad = [r for r in res.rows if r["status"] not in ("ok",)]
    if bad:
        lines += ["## Runs that did not finish", "",
                  md_table(["run", "seed", "status", "error"], [[r["run"], r["seed"], r["status"], r.get("error", "")]
                                                               for r in bad]), ""]
    return "\n".join(lines)


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table (for the terminal)."""
    cells = [[_f(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def suite_text(res) -> str:
    parts = []
    h, rows = phase_table(res.rows, timed_columns(res.suite))
    parts.append(table(h, rows))
    if res.verdicts:
        parts.append("")
        parts.append(table(["expectation", "rule", "median", "range", "n", "p", "verdict"],
                           [[r[0], r[2], r[3], r[4], r[5], r[6], r[7]] for r in verdict_rows(res.verdicts)]))
    bad = [r for r in res.rows if r["status"] != "ok"]
    for r in bad:
        parts.append(f"run {r['run']} seed {r['seed']}: {r['status']} {r.get('error', '')}")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Curves


def suite_curves(res, column: str = "loss") -> dict[str, dict[int, tuple[list, list]]]:
    """variant[grid] → seed → (steps, values) read from each run's metrics.jsonl."""
    out: dict = {}
    for r in res.rows:
        rows = SuiteDir(res.dir).run(r["run"], int(r["seed"])).metrics()
        pts = [(x["step"], x[column]) for x in rows if x.get(column) is not None]
        if pts:
            label = r["variant"] + (f" [{r['grid']}]" if r.get("grid") else "")
            out.setdefault(label, {})[r["seed"]] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def curve_table(curves: dict, at: list[int]) -> tuple[list[str], list[list]]:
    """Median over seeds of each curve at the evaluation nearest each step in `at`."""
    rows = []
    for label, seeds in curves.items():
        line = [label]
        for step in at:
            vals = []
            for steps, values in seeds.values():
                i = min(range(len(steps)), key=lambda k: abs(steps[k] - step))
                vals.append(values[i])
            line.append(statistics.median(vals) if vals else None)
        rows.append(line)
    return ["step →"] + [str(s) for s in at], rows


def plot_curves(curves: dict, path: Path, title: str = "", ylabel: str = "train loss",
                hlines: dict | None = None, windows: dict | None = None, log: bool = False) -> Path:
    """One line per seed, a colour per condition; optional reference lines and clamp windows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, seeds) in enumerate(curves.items()):
        c = colours[i % len(colours)]
        for j, (steps, values) in enumerate(seeds.values()):
            ax.plot(steps, values, color=c, alpha=0.8, lw=1.2, label=label if j == 0 else None)
        for a, b in (windows or {}).get(label, []):
            ax.axvspan(a, b, color=c, alpha=0.08)
    for name, y in (hlines or {}).items():
        ax.axhline(y, color="grey", ls="--", lw=0.8)
        ax.text(ax.get_xlim()[1], y, f" {name}", va="center", fontsize=8, color="grey")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_suite_report(res, curves: bool = True) -> list[Path]:
    """report.md (and, with `curves`, loss_curves.png) of a suite directory, written atomically."""
    d = Path(res.dir)
    sd = SuiteDir(d)
    with writer(d, "suite", what=str(d)):
        atomic_write(sd.report_md, suite_markdown(res))
        out = [sd.report_md]
        if curves:
            c = suite_curves(res)
            if any(c.values()):
                out.append(plot_curves(c, report_paths(d)[2], title=f"suite {res.suite.name}"))
    return out


def run_curves(run) -> dict:
    """{run name: seed → (steps, losses)} of a Run (runs.Run)."""
    return {run.name: {s: ([r["step"] for r in sr.metrics], [r["loss"] for r in sr.metrics])
                       for s, sr in run.seeds.items()}}


def run_rows(run) -> tuple[list[str], list[list]]:
    """Per seed: status, final loss and the phase changes found."""
    rows = []
    for s, sr in sorted(run.seeds.items()):
        ph = sr.summary.get("phases", {})
        cells = [f"{c} {k}: {v.get('step')}" for c, rules in ph.items() for k, v in rules.items()
                 if isinstance(v, dict)]
        rows.append([s, sr.status, sr.summary.get("final", {}).get("loss"), "; ".join(cells)])
    return ["seed", "status", "final loss", "phase changes"], rows
