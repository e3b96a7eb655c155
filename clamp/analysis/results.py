"""A suite's results: the table of its runs, and its expectations judged on it.

Analysis layer. `SuiteResult` is what `clamp bench` returns and `clamp report` re-reads
(`load_results`: suite.yaml + each run's summary.json, nothing rerun); `judge` applies an
expectation per seed with interval arithmetic for censored phase changes (a run that never
changed counts as its length, a lower bound), so a verdict is PASS or FAIL only when it holds
whatever the censored times really are, and CENSORED otherwise.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..models.plugins import reading_directory
from ..names import columns as C
from ..names.errors import InputError
from ..names.phases import column_value, spread
from ..names.yamlio import load_yaml_file
from ..recipe.suite import Expectation, Suite, primary_crossing, suite_from_data
from ..store.rundir import PLAN, SuiteDir
from ..training.benches import collect_rows


@dataclass
class SuiteResult:
    suite: Suite
    dir: Path
    rows: list[dict]
    verdicts: list[dict]

    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows) and all(v["verdict"] == "PASS" for v in self.verdicts)


def suite_result(suite: Suite, directory: str | os.PathLike, rows: list[dict]) -> SuiteResult:
    """The result of a suite's rows: every expectation judged."""
    return SuiteResult(suite, Path(directory), rows, [judge(e, rows, suite, directory) for e in suite.expect])


def load_results(path: str | os.PathLike) -> SuiteResult:
    """Re-read a suite directory (suite.yaml + each run's summary.json) without running anything."""
    d = Path(path)
    sd = SuiteDir(d)
    if not sd.suite_file.exists():
        raise InputError(str(d), "", f"no {sd.suite_file.name}", "a directory written by `clamp bench`")
    data, src = load_yaml_file(sd.suite_file, "a suite file")
    with reading_directory(str(sd.suite_file)):
        suite = suite_from_data(data, src)
    return suite_result(suite, d, collect_rows(suite, d))


def value_of(row: dict, of: str, primary: str) -> tuple[float | None, bool]:
    """(value, censored) of a quantity in a result row. A phase change that never happened (no
    crossing, or no plateau to leave) is censored: it counts as the run length, a lower bound."""
    if row.get("status") != "ok":
        return None, False
    parts = of.split(":")
    if of == "crossing":
        key = primary
    elif parts[0] == "crossing" or (parts[0] == "phase" and (len(parts) == 3 or parts[3] == "step")):
        key = C.crossing_column(parts[1], parts[2])
    elif parts[0] == "phase":
        v = row.get(of)
        return (None if v in (None, "") else float(v)), False
    elif parts[0] == "final":
        return column_value(row, of.split(":", 1)[1], prefix="final:"), False
    else:
        key = of
    v = row.get(key)
    if C.is_crossing(key) and v in (None, ""):
        return float(row.get("steps") or 0), True
    return (None if v in (None, "") else float(v)), False


INF = float("inf")


def _interval(e: Expectation, va: float, ca: bool, vb: float | None, cb: bool) -> tuple[float, float] | None:
    """The range the per-seed statistic can lie in: a censored time is a lower bound (>= its value)."""
    a = (va, INF if ca else va)
    if e.kind == "value":
        lo, hi = a
    else:
        assert vb is not None                            # ratios and differences have a second operand
        b = (vb, INF if cb else vb)
        if e.kind == "ratio":
            if b[0] <= 0 or a[0] < 0:
                return None if b[0] == 0 else (va / vb, va / vb) if not (ca or cb) else None
            lo, hi = a[0] / b[1], a[1] / b[0]
        else:
            lo, hi = a[0] - b[1], a[1] - b[0]
    if e.abs:
        lo, hi = (lo, hi) if lo >= 0 else (-hi, -lo) if hi <= 0 else (0.0, max(-lo, hi))
    return lo, hi


def _decide(e: Expectation, lo: float, hi: float) -> bool | None:
    """True if the rule holds for every value in [lo, hi], False if for none, None if it depends."""
    if e.between is not None:
        a, b = e.between
        return True if a < lo and hi < b else False if hi <= a or lo >= b else None
    if e.below is not None:
        return True if hi < e.below else False if lo >= e.below else None
    assert e.above is not None                           # suite.py requires below, above or between
    return True if lo > e.above else False if hi <= e.above else None


def judge(e: Expectation, rows: list[dict], suite: Suite, directory: str | os.PathLike | None = None) -> dict:
    """Per seed (and grid point): the statistic, and the range it can lie in when a phase change was
    censored; then the median, its range over seeds, a sign test, and a verdict that is PASS or FAIL
    only if it holds whatever the censored times really are (else CENSORED).

    A pair of runs that trained alike (same recipe apart from its interventions, and the same
    compiled plan, as when a head selection picked no head in that seed) tests nothing: it is listed
    under `untested` and left out of the verdict (read from the runs' plan.txt, given `directory`)."""
    per = _per_seed(e, rows, suite)
    untested = [p for p in per if directory is not None and _alike(e, p, suite, Path(directory))]
    per = [p for p in per if p not in untested]
    out = {"name": e.name, "kind": e.kind, "a": e.a.variant, "b": e.b.variant if e.b else None,
           "of": e.a.of, "statistic": _statistic(e), "rule": e.rule(),
           "per_seed": per, "n": len(per), "censored": sum(p["censored"] for p in per),
           "untested": [{"grid": p["grid"], "seed": p["seed"]} for p in untested]}
    if not per:
        return {**out, "median": None, "min": None, "max": None, "p": None, "verdict": "NO DATA",
                "note": "no finished run pair to compare" + (_untested_note(untested) if untested else "")}
    got = {**out, **_verdict(e, per)}
    if untested:
        got["note"] = "; ".join(x for x in (got["note"], _untested_note(untested)[2:]) if x)
    return got


def _untested_note(untested: list[dict]) -> str:
    seeds = ", ".join(str(p["seed"]) + (f" [{p['grid']}]" if p["grid"] else "") for p in untested)
    return (f"; left out, seed {seeds}: both runs trained alike (same recipe but for the interventions, and the "
            "same plan: the intervention selected nothing there), so the pair tests nothing")


def _alike(e: Expectation, p: dict, suite: Suite, d: Path) -> bool:
    """Whether the two runs of a per-seed pair trained identically: their recipes differ at most in
    name, interventions, subcircuits, measures and phase rules, and their plan.txt files are equal."""
    if e.b is None or e.b.variant == e.a.variant:
        return False
    from ..recipe.types import recipe_to_dict
    runs = {r.variant: r for r in suite.runs() if r.point == p["grid"] and r.seed == p["seed"]}
    if e.a.variant not in runs or e.b.variant not in runs:
        return False
    strip = lambda r: {k: v for k, v in recipe_to_dict(r).items()  # noqa: E731
                       if k not in ("name", "interventions", "subcircuits", "measure", "phases")}
    a, b = runs[e.a.variant], runs[e.b.variant]
    if strip(a.recipe) != strip(b.recipe):
        return False
    return same_plan(d, a.id, d, b.id, p["seed"])


def same_plan(dir_a: Path, run_a: str, dir_b: Path, run_b: str, seed: int) -> bool:
    """Whether two runs of suites (directory, run id) at a seed compiled the same plan.txt."""
    plans = [SuiteDir(d).run(r, seed).path / PLAN for d, r in ((dir_a, run_a), (dir_b, run_b))]
    return all(f.is_file() for f in plans) and plans[0].read_text() == plans[1].read_text()


def _per_seed(e: Expectation, rows: list[dict], suite: Suite) -> list[dict]:
    """One entry per (grid point, seed) where both operands exist: the value and its interval."""
    primary = primary_crossing(suite.base)
    index = {(r["variant"], r["grid"], r["seed"]): r for r in rows}
    per: list[dict] = []
    for point in sorted({r["grid"] for r in rows}):
        for seed in suite.seeds:
            ra = index.get((e.a.variant, point, seed))
            rb = index.get((e.b.variant, point, seed)) if e.b else None
            if ra is None or (e.b and rb is None):
                continue
            va, ca = value_of(ra, e.a.of, primary)
            vb, cb = value_of(rb, e.b.of, primary) if e.b and rb is not None else (None, False)
            if va is None or (e.b and vb is None) or (e.kind == "ratio" and vb == 0):
                continue
            x = va / vb if e.kind == "ratio" else va - vb if e.kind == "difference" else va   # type: ignore[operator]
            iv = _interval(e, va, ca, vb, cb)
            if iv is None:
                continue
            per.append({"grid": point, "seed": seed, "value": abs(x) if e.abs else x, "censored": ca or cb,
                        "a": va, "b": vb, "low": iv[0], "high": iv[1], "holds": _decide(e, *iv)})
    return per


def _statistic(e: Expectation) -> str:
    """The statistic in words, e.g. 'match / baseline of crossing'."""
    same = e.a.of == (e.b.of if e.b else e.a.of)
    desc = e.a.variant if same else f"{e.a.variant}:{e.a.of}"
    if e.b:
        desc += f" / {e.b.variant}" if e.kind == "ratio" else f" − {e.b.variant}"
        if e.b.of != e.a.of:
            desc += f":{e.b.of}"
    if same:
        desc += f" of {e.a.of}"
    return f"|{desc}|" if e.abs else desc


def _verdict(e: Expectation, per: list[dict]) -> dict:
    """Median and spread over seeds, the range the median can lie in, the sign test, the verdict."""
    from scipy.stats import binomtest
    xs = [p["value"] for p in per]
    med_lo = statistics.median([p["low"] for p in per])
    med_hi = statistics.median([p["high"] for p in per])
    decided = [p["holds"] for p in per if p["holds"] is not None]
    hits = sum(decided)
    p = binomtest(hits, len(decided), 0.5, alternative="greater").pvalue if decided else None
    if e.require == "median":
        holds = _decide(e, med_lo, med_hi)
    else:
        holds = False if False in [q["holds"] for q in per] else True if all(q["holds"] for q in per) else None
    censored = sum(q["censored"] for q in per)
    note = ""
    if censored:
        note = (f"{censored} of {len(per)} seed(s) had a phase change that did not happen within the run "
                f"(counted as the run length, a lower bound); the median lies in [{med_lo:.3g}, {med_hi:.3g}]")
        if holds is None:
            note += ", on both sides of the rule: undecided"
    return {**spread(xs), "median_range": [med_lo, med_hi], "hits": hits, "p": p,
            "verdict": {True: "PASS", False: "FAIL", None: "CENSORED"}[holds], "note": note}
