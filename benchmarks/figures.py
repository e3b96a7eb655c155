"""Figures of the benchmark suites (PNG in benchmarks/), read from their suite directories.

    python benchmarks/figures.py [--singh runs/singh2024] [--subcircuits runs/subcircuits] [--tokens runs/repeat_tokens]

singh2024_loss_curves.png: train loss of the single-head baseline and of each of the paper's
clamps (cases 1-5) and of a windowed match clamp (from the subcircuits suite), one line per seed; a clamp's window is
shaded in its colour when it does not span the whole run.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from clamp.analysis.report import plot_curves, suite_curves  # noqa: E402
from clamp.analysis.results import load_results  # noqa: E402

SINGH = ["baseline", "match", "copy", "ideal_copy", "prev_token", "layer0_ideal", "match_until1000"]
TOKENS = ["two_layer", "one_layer", "prev_token_clamp", "disallow_prev", "ablate_layer0", "freeze_embed"]


def windows_of(res, variants) -> dict:
    """variant → the windows of its interventions that are not whole-run (to shade)."""
    out = {}
    for (variant, _point), recipe in res.suite.recipes.items():
        if variant in variants:
            ws = [w for iv in recipe.interventions for w in iv.windows if w != (0, recipe.train.steps)]
            if ws:
                out[variant] = ws
    return out


def figure(suite_dirs: list[Path], variants: list[str], png: Path, title: str, hlines: dict, ylabel: str,
           **kw) -> Path:
    curves, windows = {}, {}
    for d in suite_dirs:
        if not Path(d, "suite.yaml").exists():
            continue
        res = load_results(d)
        curves.update({k: v for k, v in suite_curves(res).items() if k in variants and k not in curves})
        windows.update(windows_of(res, variants))
    curves = {k: curves[k] for k in variants if k in curves}
    return plot_curves(curves, png, title=title, ylabel=ylabel, hlines=hlines, windows=windows, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--singh", default="runs/singh2024")
    ap.add_argument("--subcircuits", default="runs/subcircuits")
    ap.add_argument("--tokens", default="runs/repeat_tokens")
    a = ap.parse_args()
    if Path(a.singh, "suite.yaml").exists():
        p = figure([Path(a.singh), Path(a.subcircuits)], SINGH, HERE / "singh2024_loss_curves.png",
                   "Few-shot task, single active head: baseline vs. the paper's clamps (one line per seed)",
                   {"ln 2": math.log(2), "0.4·ln 2": 0.4 * math.log(2)}, "train loss")
        print(f"wrote {p}")
    if Path(a.tokens, "suite.yaml").exists():
        p = figure([Path(a.tokens)], TOKENS, HERE / "repeat_tokens_loss_curves.png",
                   "Repeated random tokens: loss on the copy (one line per seed)",
                   {"ln 64": math.log(64), "½·ln 64": 0.5 * math.log(64)}, "loss on the copy")
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
