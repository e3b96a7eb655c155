"""Metric curves → phase-change times.

Reads what train.py writes (metrics rows) and feeds summary.json, bench and graph.
Rules (docs/science.md §5), each reported under its own name:

- below / above: the first evaluation whose value is below (above) an absolute threshold
  (the paper's learning time is `loss` below 0.4·ln 2);
- band [lo, hi]: a plateau inside the band (REFERENCE case 1): when the curve first enters
  it (reach), when it drops below it for good (leave, the rule's step), and the fraction of
  evaluations in between that lie inside the band;
- relative: the first evaluation after the plateau that has gone `frac` of the way from
  the plateau level to the final level. The plateau level is where the curve dwells
  longest (in steps, not evaluations) before it first comes within 10% of its final
  level; the final level is the median of the last tenth of evaluations.

- logistic: level — a logistic fitted after the plateau begins; its midpoint t0 with a
  `level` (e.g. 0.95) confidence interval from a residual bootstrap;
- max_slope: smooth — the step of steepest change toward the final level after the plateau
  begins, on the curve smoothed by a Gaussian of `smooth` steps (0: 2% of the run).

A curve that never meets a rule gets step None ("did not change"), never a forced time.
`paired` compares two conditions seed by seed (docs/science.md §5).
"""
from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence

import numpy as np

_AGG = re.compile(r"^(max|min|mean)\((.+)\)\Z")


def column_value(row: dict, col: str, prefix: str = "") -> float | None:
    """A metric column of a row, or an aggregate over columns: `max(induction_score/blocks.1.attn.
    hook_pattern[*])` is the largest of the matching columns (`*` matches anything)."""
    m = _AGG.match(col)
    if not m:
        v = row.get(prefix + col)
        return None if v in (None, "") or isinstance(v, (dict, list)) else float(v)
    rx = re.compile("^" + re.escape(prefix + m.group(2)).replace(r"\*", ".*") + r"\Z")
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


PLATEAU = {"flat": 0.1, "dwell": 0.05, "drop": 0.25, "sharp": 3.0}
PLATEAU_DOC = {
    "flat": "the plateau stays within ±flat of the way from its level to the final level",
    "dwell": "for at least this fraction of the curve's steps (and 3 evaluations)",
    "drop": "the way from the plateau to the final level is at least this fraction of how far the curve moves "
            "from the plateau on",
    "sharp": "and is covered at least this many times faster than the curve drifts on the plateau",
}


def plateau_levels(steps: Sequence[int], values: Sequence[float], flat: float = PLATEAU["flat"],
                   dwell: float = PLATEAU["dwell"], drop: float = PLATEAU["drop"],
                   sharp: float = PLATEAU["sharp"]) -> dict:  # long: one algorithm, its steps in the order they run
    """The plateau of a curve and the level it leaves for, if there is one that is really there.

    On the curve (median-smoothed over 3 evaluations; non-finite points dropped): the final level f
    is the median of the last tenth; the plateau level p is where the curve dwells longest (in
    steps) before it first comes within 10% of f. It is a plateau only if (PLATEAU, documented in
    the README): the longest stretch of evaluations within ±flat·|p - f| of p lasts at least
    dwell × the curve's steps and 3 evaluations; |p - f| is at least drop × how far the curve moves
    from the plateau on; and the curve covers 80% of the way from p to f at least `sharp` times
    faster than it drifts along the stretch. Returns {'plateau', 'final', 'plateau_index',
    'plateau_end', 'dwell', 'sharpness'} or, when there is none, {'reason': ...}."""
    pts = [(float(a), float(b)) for a, b in zip(steps, values) if b is not None and math.isfinite(float(b))]
    if len(pts) < 6:
        return {"reason": f"too few evaluations ({len(pts)}) to find a plateau"}
    s = np.array([p[0] for p in pts])
    v = _median_smooth(np.array([p[1] for p in pts]))
    n = len(v)
    k = max(3, n // 10)
    final = float(np.median(v[-k:]))
    span = float(np.max(np.abs(v - final)))
    if span < 1e-9:
        return {"reason": "the curve does not change"}
    near = int(np.argmax(np.abs(v - final) <= 0.1 * span))
    pre_v = v[:near + 1]
    lo, hi = float(pre_v.min()), float(pre_v.max())
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        plateau = float(pre_v[0])
    else:
        dwell_w = np.diff(np.append(s[:near + 1], s[min(near + 1, n - 1)]))
        bins = np.linspace(lo, hi, 21)
        which = np.clip(np.digitize(pre_v, bins) - 1, 0, 19)
        weight = np.bincount(which, weights=dwell_w, minlength=20)
        plateau = float(np.median(pre_v[which == int(np.argmax(weight))]))
    D = abs(plateau - final)
    base = {"plateau": plateau, "final": final}
    if 1e-12 * max(1.0, abs(plateau)) > D:
        return {**base, "reason": f"no plateau to leave: it is at the final level {final:.4g}"}
    inside = np.abs(v[:near + 1] - plateau) <= flat * D
    best, a = (0, -1), None
    for i, ok in enumerate(list(inside) + [False]):            # the longest stretch inside the band
        if ok and a is None:
            a = i
        elif not ok and a is not None:
            if i - a > best[1] - best[0] + 1 or best[1] < 0:
                best = (a, i - 1)
            a = None
    i0, i1 = best
    # the drop is measured against what the curve does from the plateau on, not against a range that a
    # fall to the plateau may dominate (a loss falling 1.1 → 0.98, resting, then dropping to 0.87)
    rng = float(v[max(i0, 0):].max() - v[max(i0, 0):].min()) if i1 >= 0 else float(v.max() - v.min())
    if drop * rng > D:
        return {**base, "reason": f"no plateau to leave: from {plateau:.4g} to the final {final:.4g} is "
                f"{D / rng:.0%} of how far the curve moves from the plateau on (a phase change needs {drop:.0%})"}
    total = float(s[-1] - s[0]) or 1.0
    length = float(s[i1] - s[i0]) if i1 >= 0 else 0.0
    if i1 < 0 or i1 - i0 + 1 < 3 or length < dwell * total:
        return {**base, "reason": f"no plateau: the curve stays near {plateau:.4g} for {length:.0f} steps "
                f"(a plateau lasts >= {dwell:.0%} of the run's {total:.0f} steps and 3 evaluations)"}
    target = plateau + 0.8 * (final - plateau)
    after = np.nonzero((v[i1:] - target) * np.sign(final - plateau) >= 0)[0]
    t_trans = float(s[i1 + after[0]] - s[i1]) if len(after) else total
    drift = float(v[i0:i1 + 1].max() - v[i0:i1 + 1].min())
    rate_trans = 0.8 * D / max(t_trans, 1e-9)
    rate_plateau = drift / max(length, 1e-9)
    sharpness = rate_trans / rate_plateau if rate_plateau > 0 else math.inf
    if sharpness < sharp:
        return {**base, "reason": f"no phase change: leaving {plateau:.4g} is only {sharpness:.1f}x faster than "
                f"the drift along it (needs {sharp:g}x): a smooth change, not a plateau and a drop"}
    return {**base, "plateau_index": int(np.searchsorted(np.asarray(steps, dtype=float), s[i0])),
            "plateau_end": int(np.searchsorted(np.asarray(steps, dtype=float), s[i1])),
            "dwell": length, "sharpness": sharpness if math.isfinite(sharpness) else None}


def relative_crossing(steps: Sequence[int], values: Sequence[float], frac: float = 0.5, **plateau) -> dict:
    """The first evaluation after a real plateau that has gone `frac` of the way from the plateau
    level to the final level; step None (with the reason) where there is no plateau."""
    lv = plateau_levels(steps, values, **plateau)
    if "reason" in lv:
        return {"step": None, **lv}
    p, f = lv["plateau"], lv["final"]
    thr = p + frac * (f - p)
    i1 = lv["plateau_end"]
    step = threshold_crossing(list(steps)[i1:], list(values)[i1:], thr, below=f < p)
    out = {"step": step, "plateau": p, "final": f, "threshold": thr, "plateau_from": int(steps[lv["plateau_index"]]),
           "plateau_to": int(steps[i1])}
    if step is None:
        out["reason"] = "the curve did not get that far after the plateau"
    return out


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


def _sigmoid_curve(t, hi, lo, t0, w):
    return lo + (hi - lo) / (1.0 + np.exp(np.clip((t - t0) / w, -60, 60)))


def logistic_fit(steps: Sequence[int], values: Sequence[float], level: float = 0.95, bootstrap: int = 200,
                 seed: int = 0) -> dict:
    """Fit y = lo + (hi - lo) / (1 + exp((t - t0)/w)) to the curve after its plateau begins; t0 is the
    phase-change time, with a `level` confidence interval from a residual bootstrap (refits on
    the fitted curve plus resampled residuals). Curves without a clear transition get no time."""
    from scipy.optimize import curve_fit
    lv = plateau_levels(steps, values)
    if "reason" in lv:
        return {"step": None, "reason": lv["reason"]}
    i0 = lv["plateau_index"]
    t = np.asarray(steps[i0:], dtype=float)
    y = np.asarray(values[i0:], dtype=float)
    if len(t) < 6:
        return {"step": None, "reason": "too few evaluations after the plateau"}
    hi, lo = lv["plateau"], lv["final"]
    rel = relative_crossing(steps, values, 0.5)
    t0 = float(rel["step"]) if rel.get("step") is not None else float(np.median(t))
    span = float(t[-1] - t[0]) or 1.0
    p0 = [hi, lo, t0, span / 20]
    bounds = ([-np.inf, -np.inf, t[0] - span, span / 1e4], [np.inf, np.inf, t[-1] + span, span])

    def fit(yy):
        p, _ = curve_fit(_sigmoid_curve, t, yy, p0=p0, bounds=bounds, maxfev=5000)
        return p
    try:
        p = fit(y)
    except (RuntimeError, ValueError):
        return {"step": None, "reason": "the logistic fit did not converge"}
    resid = y - _sigmoid_curve(t, *p)
    noise = float(np.std(resid))
    amp = abs(p[0] - p[1])
    if amp < 3 * noise or not (t[0] <= p[2] <= t[-1]):
        return {"step": None, "reason": "no transition distinguishable from noise", "t0": float(p[2])}
    rng = np.random.default_rng(seed)
    fitted = _sigmoid_curve(t, *p)
    boots = []
    for _ in range(bootstrap):
        try:
            boots.append(fit(fitted + rng.choice(resid, size=len(resid), replace=True))[2])
        except (RuntimeError, ValueError):
            continue
    a = (1 - level) / 2
    ci = [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))] if len(boots) >= 20 else None
    return {"step": int(round(p[2])), "t0": float(p[2]), "ci": ci, "level": level, "width": float(p[3]),
            "plateau": float(p[0]), "final": float(p[1]), "noise": noise}


def max_slope(steps: Sequence[int], values: Sequence[float], smooth: float = 0.0) -> dict:
    """The step of steepest change toward the final level after the plateau begins, on a curve
    resampled to a uniform grid and smoothed by a Gaussian of `smooth` steps (0: 2% of the run)."""
    from scipy.ndimage import gaussian_filter1d
    lv = plateau_levels(steps, values)
    if "reason" in lv:
        return {"step": None, "reason": lv["reason"]}
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    dt = max(1.0, float(np.min(np.diff(s))))
    grid = np.arange(s[0], s[-1] + dt / 2, dt)
    yg = np.interp(grid, s, v)
    sigma = (smooth or 0.02 * (s[-1] - s[0])) / dt
    ys = gaussian_filter1d(yg, sigma, mode="nearest")
    slope = np.gradient(ys, dt)
    start = np.searchsorted(grid, s[lv["plateau_index"]])
    sign = -1.0 if lv["final"] < lv["plateau"] else 1.0
    # only where the curve lies between the plateau and the final level (not the way into the plateau)
    between = -sign * (ys - lv["plateau"]) <= 0.05 * abs(lv["plateau"] - lv["final"])
    seg = np.where(between[start:], sign * slope[start:], -np.inf)
    if len(seg) == 0 or seg.max() <= 0:
        return {"step": None, "reason": "no change after the plateau"}
    k = start + int(np.argmax(seg))
    return {"step": int(round(grid[k])), "slope": float(slope[k]), "smooth": float(sigma * dt)}


def paired(a: dict, b: dict, kind: str = "ratio", level: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Per-seed comparison of two conditions: {seed: value} each → the per-seed ratios (or
    differences), their median with a bootstrap interval, and sign and Wilcoxon signed-rank tests
    of 'no effect' (ratio 1, difference 0)."""
    from scipy.stats import binomtest, wilcoxon
    seeds = sorted(set(a) & set(b))
    per = {}
    for s_ in seeds:
        x, y = a[s_], b[s_]
        if x is None or y is None or (kind == "ratio" and y == 0):
            continue
        per[s_] = x / y if kind == "ratio" else x - y
    xs = np.array(list(per.values()), dtype=float)
    out: dict = {"kind": kind, "per_seed": per, "n": len(xs)}
    if len(xs) == 0:
        return {**out, "median": None}
    if kind == "ratio":
        pos = xs > 0
        eff = np.log(np.where(pos, xs, 1.0))
        # a ratio of 0 (a time of 0 against a positive one) is the largest downward effect: rank it so
        eff[~pos] = -(np.abs(eff[pos]).max() + 1.0 if pos.any() else 1.0)
    else:
        eff = xs
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(xs, size=(bootstrap, len(xs)), replace=True), axis=1)
    a_ = (1 - level) / 2
    out.update(median=float(np.median(xs)), min=float(xs.min()), max=float(xs.max()),
               ci=[float(np.quantile(meds, a_)), float(np.quantile(meds, 1 - a_))], level=level)
    nz = eff[eff != 0]
    out["sign_p"] = float(binomtest(int((nz > 0).sum()), len(nz), 0.5).pvalue) if len(nz) else 1.0
    try:
        out["wilcoxon_p"] = float(wilcoxon(eff).pvalue) if len(nz) else 1.0
    except ValueError:
        out["wilcoxon_p"] = None
    return out


def spread(values) -> dict:
    """The per-seed summary every table uses: median, min and max of the values that exist (None
    left out; all None when there are none)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


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
        curve = [float("nan") if v is None else float(v) for v in vals]
        for kind in ("below", "above"):
            if kind in rule:
                st = threshold_crossing(steps, curve, rule[kind], below=(kind == "below"))
                res[kind] = {"threshold": rule[kind], "step": st}
        if "relative" in rule:
            opts = rule["relative"] if isinstance(rule["relative"], dict) else {"frac": rule["relative"]}
            extra = {k: v for k, v in opts.items() if k != "frac"}
            res["relative"] = {"frac": opts["frac"], **relative_crossing(steps, curve, opts["frac"], **extra)}
        if "band" in rule:
            res["band"] = {"band": list(rule["band"]), **band_stats(steps, curve, *rule["band"])}
        if "logistic" in rule:
            res["logistic"] = logistic_fit(steps, curve, level=rule["logistic"])
        if "max_slope" in rule:
            res["max_slope"] = max_slope(steps, curve, smooth=rule["max_slope"])
        for r in res.values():
            r["sequences"] = None if r.get("step") is None else r["step"] * batch
        out[col] = res
    return out
