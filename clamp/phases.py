"""Metric curves → phase-change times.

Reads what train.py writes (metrics rows) and feeds summary.json, bench and graph.
Rules (REFERENCE.md §5), each reported under its own name:

- below / above: the first evaluation whose value is below (above) an absolute threshold
  (the paper's learning time is `loss` below 0.4·ln 2);
- band [lo, hi]: a plateau inside the band (REFERENCE case 1): when the curve first enters
  it (reach), when it drops below it for good (leave, the rule's step), and the fraction of
  evaluations in between that lie inside the band;
- relative: the first evaluation after the plateau that has gone `frac` of the way from
  the plateau level to the final level. The plateau level is where the curve dwells
  longest (in steps, not evaluations) before it first comes within 10% of its final
  level; the final level is the median of the last tenth of evaluations.

A curve that never meets a rule gets step None ("did not change"), never a forced time.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

_AGG = re.compile(r"^(max|min|mean)\((.+)\)$")


def column_value(row: dict, col: str, prefix: str = "") -> float | None:
    """A metric column of a row, or an aggregate over columns: `max(induction_score/blocks.1.attn.
    hook_pattern[*])` is the largest of the matching columns (`*` matches anything)."""
    m = _AGG.match(col)
    if not m:
        v = row.get(prefix + col)
        return None if v in (None, "") or isinstance(v, (dict, list)) else float(v)
    rx = re.compile("^" + re.escape(prefix + m.group(2)).replace(r"\*", ".*") + "$")
    xs = [float(v) for k, v in row.items() if rx.match(k) and v not in (None, "") and not isinstance(v, (dict, list))]
    if not xs:
        return None
    return max(xs) if m.group(1) == "max" else min(xs) if m.group(1) == "min" else sum(xs) / len(xs)


def threshold_crossing(steps: Sequence[int], values: Sequence[float], threshold: float,
                       below: bool = True) -> int | None:
    for s, v in zip(steps, values):
        if v is None or not math.isfinite(v):
            continue
        if (v < threshold) if below else (v > threshold):
            return int(s)
    return None


def _median_smooth(v: np.ndarray, k: int = 3) -> np.ndarray:
    if len(v) < k:
        return v.copy()
    pad = k // 2
    p = np.pad(v, pad, mode="edge")
    return np.array([np.median(p[i:i + k]) for i in range(len(v))])


def plateau_levels(steps: Sequence[int], values: Sequence[float]) -> dict | None:
    """{'plateau', 'final', 'plateau_index'} of a curve, or None if it never moves."""
    s = np.asarray(steps, dtype=float)
    v = _median_smooth(np.asarray(values, dtype=float))
    n = len(v)
    if n < 4 or not np.all(np.isfinite(v)):
        return None
    k = max(3, n // 10)
    final = float(np.median(v[-k:]))
    span = float(np.max(np.abs(v - final)))
    if span < 1e-9:
        return None
    near = int(np.argmax(np.abs(v - final) <= 0.1 * span))
    pre_v = v[:near + 1]
    dwell = np.diff(s[:near + 2]) if near + 1 < n else np.append(np.diff(s[:near + 1]), 0)
    dwell = dwell[:len(pre_v)]
    lo, hi = float(pre_v.min()), float(pre_v.max())
    if hi - lo < 1e-12:
        return {"plateau": float(pre_v[0]), "final": final, "plateau_index": 0}
    bins = np.linspace(lo, hi, 21)
    which = np.clip(np.digitize(pre_v, bins) - 1, 0, 19)
    weight = np.bincount(which, weights=dwell, minlength=20)
    b = int(np.argmax(weight))
    members = np.nonzero(which == b)[0]
    plateau = float(np.median(pre_v[members]))
    return {"plateau": plateau, "final": final, "plateau_index": int(members[0])}


def relative_crossing(steps: Sequence[int], values: Sequence[float], frac: float = 0.5) -> dict:
    lv = plateau_levels(steps, values)
    if lv is None:
        return {"step": None, "reason": "the curve does not change"}
    p, f = lv["plateau"], lv["final"]
    if abs(f - p) < 1e-9:
        return {"step": None, "plateau": p, "final": f, "reason": "no change after the plateau"}
    thr = p + frac * (f - p)
    below = f < p
    i0 = lv["plateau_index"]
    step = threshold_crossing(list(steps)[i0:], list(values)[i0:], thr, below=below)
    return {"step": step, "plateau": p, "final": f, "threshold": thr}


def band_stats(steps: Sequence[int], values: Sequence[float], lo: float, hi: float) -> dict:
    """The plateau of a falling curve inside [lo, hi]: when it is reached, when the curve drops
    below the band for good, and the fraction of evaluations in between spent inside the band."""
    vals = list(values)
    inside = [v is not None and lo <= v <= hi for v in vals]
    if not any(inside):
        return {"step": None, "reach": None, "leave": None, "fraction": None, "reason": "never in the band"}
    r = inside.index(True)
    leave = next((i for i in range(r, len(vals)) if vals[i] is not None and vals[i] < lo
                  and all(v is None or v < hi for v in vals[i:])), None)
    span = inside[r:leave] if leave is not None else inside[r:]
    frac = sum(span) / len(span) if span else None
    out = {"reach": int(steps[r]), "leave": None if leave is None else int(steps[leave]), "fraction": frac}
    out["step"] = out["leave"]
    if leave is not None and steps[r] > 0:
        out["plateau_over_reach"] = (steps[leave] - steps[r]) / steps[r]
    return out


def phase_times(rows: list[dict], rules: dict[str, dict], batch: int) -> dict:
    """Apply recipe phase rules to metric rows → {column: {rule: {step, sequences, ...}}}."""
    steps = [r["step"] for r in rows]
    out: dict = {}
    for col, rule in rules.items():
        vals = [column_value(r, col) for r in rows]
        res: dict = {}
        if all(v is None for v in vals):
            out[col] = {"error": f"no column {col!r} in the metrics"}
            continue
        vals = [float("nan") if v is None else float(v) for v in vals]
        for kind in ("below", "above"):
            if kind in rule:
                st = threshold_crossing(steps, vals, rule[kind], below=(kind == "below"))
                res[kind] = {"threshold": rule[kind], "step": st}
        if "relative" in rule:
            res["relative"] = {"frac": rule["relative"], **relative_crossing(steps, vals, rule["relative"])}
        if "band" in rule:
            res["band"] = {"band": list(rule["band"]), **band_stats(steps, vals, *rule["band"])}
        for r in res.values():
            r["sequences"] = None if r.get("step") is None else r["step"] * batch
        out[col] = res
    return out
