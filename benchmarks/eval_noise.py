"""How precise is a measure at a given evaluation size? The spread of each measure over independent
evaluation sets, for trained models before and after their phase change.

    python benchmarks/eval_noise.py [--sets 8] [--sizes 125 250 500 1000 2000]

For each recipe (the paper's few-shot baseline, recipes/singh2024/case1_baseline.yaml; the token
task, recipes/repeat_tokens/two_layer.yaml), one seed is trained once with checkpoints; at each
chosen checkpoint the model is evaluated, as the `train` evaluator is, on `sets` sets of sequences
drawn independently from the same task (its training distribution, at steps no run reaches), at
each size. The table gives the standard deviation over sets of each measure: the noise one
evaluation of that size carries (it shrinks as 1/sqrt(size)). Head measures are given for the head
that ends highest (max over heads at the last checkpoint).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.measures import evaluate  # noqa: E402
from clamp.recipe.spec import load_recipe  # noqa: E402
from clamp.store.rundir import list_checkpoints, load_checkpoint  # noqa: E402
from clamp.training.train import Trainer, train_seed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "few-shot (singh2024 baseline)": ("recipes/singh2024/case1_baseline.yaml", 3000, (500, 3000)),
    "repeat_tokens (two_layer)": ("recipes/repeat_tokens/two_layer.yaml", 1500, (250, 1500)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[125, 250, 500, 1000, 2000])
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| task | step | measure | " + " | ".join(f"sd at {n}" for n in a.sizes) + " | mean |")
    print("|---|---|---|" + "---|" * (len(a.sizes) + 1))
    for label, (path, steps, at) in CASES.items():
        r = load_recipe(ROOT / path)
        r = replace(r, seeds=(0,), train=replace(r.train, steps=steps, checkpoint_every=min(at), stop={}))
        with tempfile.TemporaryDirectory() as d:
            train_seed(r, 0, d)
            ckpts = dict(list_checkpoints(d))
            last = None
            for step in sorted(at, reverse=True):
                tr = Trainer(r, 0)
                tr.load_state(load_checkpoint(ckpts[step]))
                cols: dict[int, dict[str, list[float]]] = {}
                tr.intervener.set_step(step)
                for n in a.sizes:
                    for i in range(a.sets):
                        batch = tr.task.train_batch(10 ** 9 + 7919 * i, n)   # fresh draws, same task
                        row = evaluate(tr.intervener, {"train": batch}, None, r.measure, tr.plan.shape)
                        if last is None:
                            last = row
                        for c, v in row.items():
                            cols.setdefault(n, {}).setdefault(c, []).append(v)
                keep = [c for c in last if c.startswith(("loss", "accuracy"))]
                for kind in ("prev_token_score", "induction_strength", "induction_score"):
                    heads = [c for c in last if c.startswith(kind + "/")]
                    if heads:
                        keep.append(max(heads, key=lambda c: last[c]))
                for c in keep:
                    sds = [statistics.stdev(cols[n][c]) for n in a.sizes]
                    mean = statistics.mean(cols[a.sizes[-1]][c])
                    print(f"| {label} | {step} | {c} | " + " | ".join(f"{x:.4f}" for x in sds) + f" | {mean:.4f} |",
                          flush=True)


if __name__ == "__main__":
    main()
