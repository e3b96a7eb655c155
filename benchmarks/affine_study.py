"""Per-seed tables of the affine-recurrence study (RESULTS.md, "Affine recurrences"), read from a
finished `clamp bench benchmarks/affine.yaml` directory:

    python benchmarks/affine_study.py runs/affine

Prints markdown: phase-change steps per variant and seed with paired differences against the
baseline; the baseline's clamp-based progress measures at the end (loss with each part ablated);
the per-head measures of the paper's two roles; accuracy by position on trained and held-out pairs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from clamp.analysis.results import load_results  # noqa: E402
from clamp.measures import head_column  # noqa: E402
from clamp.store.rundir import load_model, run_dir, run_metrics  # noqa: E402
from clamp.tasks import TASKS  # noqa: E402

COPY, COMPUTE, LOSS = ("crossing:position_accuracy/pos12:above", "crossing:position_accuracy/pos2:above",
                       "crossing:loss:below")


def sign_p(diffs: list[float]) -> float:
    n = [d for d in diffs if d != 0]
    return binomtest(sum(d > 0 for d in n), len(n)).pvalue if n else 1.0


def table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def crossings(res) -> str:
    by = {(r["variant"], int(r["seed"])): r for r in res.rows}
    seeds = sorted({s for _, s in by})
    variants = list(dict.fromkeys(r["variant"] for r in res.rows))
    rows = []
    for v in variants:
        for col, name in ((COPY, "copy (pos 12)"), (COMPUTE, "compute (pos 2)")):
            vals = [by[v, s].get(col) for s in seeds]
            cell = ", ".join("never" if x in (None, "") else str(int(float(x))) for x in vals)
            if v == "baseline":
                rows.append([v, name, cell, "", ""])
                continue
            base = [by["baseline", s].get(col) for s in seeds]
            diffs = [float(a) - float(b) for a, b in zip(vals, base) if a not in (None, "") and b not in (None, "")]
            rows.append([v, name, cell, f"{statistics.median(diffs):+g} ({min(diffs):+g} to {max(diffs):+g})",
                         f"{sign_p(diffs):.3g}"])
    return table(["variant", "phase change", f"step per seed ({', '.join(map(str, seeds))})",
                  "minus baseline, median (range)", "sign test p"], rows)


def probes(res) -> str:
    rows = []
    names = ["no_layer0", "no_layer1", "no_layer2", "no_copy_head_l0", "no_least_copy_l0", "no_negsim_head_l2",
             "no_least_negsim_l2"]
    for r in res.rows:
        if r["variant"] != "baseline":
            continue
        m = [x for x in run_metrics(run_dir(res.dir, r["run"], int(r["seed"]))) if "loss@no_layer0" in x][-1]
        heads = (m.get("heads@no_copy_head_l0", {}).get("copy_head_l0", ["?"])[0],
                 m.get("heads@no_least_copy_l0", {}).get("least_copy_l0", ["?"])[0],
                 m.get("heads@no_negsim_head_l2", {}).get("negsim_head_l2", ["?"])[0],
                 m.get("heads@no_least_negsim_l2", {}).get("least_negsim_l2", ["?"])[0])
        rows.append([r["seed"], f"{m['loss']:.4f}"] + [f"{m['loss@' + n]:.3f}" for n in names] +
                    ["L0H{} / L0H{} / L2H{} / L2H{}".format(*heads)])
    return table(["seed", "loss", "layer 0 ablated", "layer 1", "layer 2", "top-copying L0 head",
                  "least-copying L0 head",
                  "top neg.-sim. L2 head", "least neg.-sim. L2 head", "heads (top/least copy, top/least neg.-sim.)"],
                 rows)


def roles(res) -> str:
    rows = []
    for r in res.rows:
        if r["variant"] != "baseline":
            continue
        m = run_metrics(run_dir(res.dir, r["run"], int(r["seed"])))[-1]
        cells = [r["seed"]]
        for meas in ("copying_score", "negative_similarity"):
            for L in range(3):
                vals = [m[head_column(meas, L, h)] for h in range(4)]
                h = max(range(4), key=lambda i: vals[i])
                cells.append(f"{vals[h]:.2f} (H{h})")
        rows.append(cells)
    return table(["seed"] + [f"max {m} L{L}" for m in ("copying", "neg. sim.") for L in range(3)], rows)


@torch.no_grad()
def by_position(res) -> str:
    rows = []
    for r in res.rows:
        if r["variant"] != "baseline":
            continue
        d = run_dir(res.dir, r["run"], int(r["seed"]))
        lm = load_model(d)
        task = TASKS[lm.recipe.task.name](lm.recipe.task.options, int(r["seed"]))
        evs = task.evaluators(512)
        cells = [r["seed"]]
        for name in ("train", "heldout"):
            b = evs[name]
            acc = (lm.seam.forward(b)[:, :-1].argmax(-1) == b.tokens[:, 1:]).float().mean(0)   # [T-1]
            cells += [f"{acc[2:9].mean():.2f}", f"{acc[10:].mean():.2f}"]
        rows.append(cells)
    return table(["seed", "trained pairs: positions 2-8 (compute)", "trained: 10-14 (copy)",
                  "held-out pairs: 2-8", "held-out: 10-14"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite_dir", nargs="?", default="runs/affine")
    a = p.parse_args()
    res = load_results(a.suite_dir)
    for title, fn in (("Phase changes", crossings), ("Ablations at the end (baseline, loss on trained pairs)", probes),
                      ("The paper's roles, per head (baseline, end)", roles),
                      ("Accuracy by position at the end (baseline)", by_position)):
        print(f"### {title}\n\n{fn(res)}\n")


if __name__ == "__main__":
    main()
