"""Throughput of an ensemble (K runs trained as one batched model) against the same K runs one after another.

    python benchmarks/ensemble.py [--ks 8 32 128] [--rounds 4] [--repeats 3] [--device cpu] [--recipe R]

The runs are the paper's model and setting (recipes/singh2024/case1_baseline.yaml: 2 layers, 8 heads,
d_model 64, batch 32) or `--recipe`'s (any family that stacks: e.g. recipes/gpt2/two_layer.yaml,
whose members fold into one batch), seeds 0..K-1. Conditions: every member plain; every member
with its own clamp (member k clamps layer-1 head k mod heads to the induction pattern over its own
window). For
each K: one block = `rounds` training steps of every member, done (a) as K Trainers stepping in turn
and (b) as one ensemble step per round; blocks of (a) and (b) interleaved, `repeats` times, median
CPU time (process_time; on CUDA, wall time after synchronize). The evaluation row times one
evaluation of every member (the recipe's evaluators, 500 sequences each) both ways.

Throughput ratio = time of K sequential steps / time of one ensemble step (higher is better).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.models.seam import stack as stack_models  # noqa: E402
from clamp.names.yamlio import load_yaml  # noqa: E402
from clamp.recipe.spec import (
    load_recipe,  # noqa: E402
    recipe_from_data,  # noqa: E402
)
from clamp.recipe.types import dump_recipe  # noqa: E402
from clamp.training import ensemble as E  # noqa: E402
from clamp.training.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def recipes(k: int, clamped: bool, device: str, path: Path):
    base = load_recipe(path)
    base = replace(base, train=replace(base.train, device=device))
    if not clamped:
        return [base] * k
    out = []
    for i in range(k):
        data, src = load_yaml(dump_recipe(base), "base.yaml")
        lo = 10 * (i % 5)
        data["interventions"] = [{"clamp": f"blocks.1.attn.hook_pattern[{i % base.shape().heads}]", "to": "induction",
                                  "steps": [lo, lo + 1000]}]
        out.append(recipe_from_data(data, src))
    return out


def clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def build(rs, device):
    solo = [Trainer(r, s) for s, r in enumerate(rs)]
    stack = stack_models(rs[0].shape(), list(range(len(rs))), device)
    opt = E.stack_optimizer(rs[0], list(stack.params))
    members = [E.Member(r, s, Path("."), None, solo[s].plan, stack.member(s), opt) for s, r in enumerate(rs)]
    return solo, E.Ensemble(members, stack, lambda ev: None), members


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes/singh2024/case1_baseline.yaml")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{a.recipe.name}, device {a.device}, {a.threads} thread(s), rounds {a.rounds}, repeats {a.repeats}")
    print("| K | condition | K sequential steps (ms) | one ensemble step (ms) | throughput ratio |")
    print("|---|---|---|---|---|")
    for k in a.ks:
        for clamped in (False, True):
            solo, ens, members = build(recipes(k, clamped, a.device, a.recipe), a.device)

            def seq(solo=solo):
                for t in solo:
                    t.train_step()

            def batched(ens=ens, members=members):
                ens.step(members)
            seq()
            batched()
            ts, te = [], []
            for _ in range(a.repeats):
                t0 = clock(a.device)
                for _ in range(a.rounds):
                    seq()
                ts.append((clock(a.device) - t0) / a.rounds)
                t0 = clock(a.device)
                for _ in range(a.rounds):
                    batched()
                te.append((clock(a.device) - t0) / a.rounds)
            s, e = statistics.median(ts), statistics.median(te)
            cond = "one clamp per member" if clamped else "no interventions"
            print(f"| {k} | {cond} | {s * 1e3:.1f} | {e * 1e3:.1f} | {s / e:.2f}x |", flush=True)
            if not clamped:
                t0 = clock(a.device)
                for t in solo:
                    t.evaluate(probes=False)
                s_eval = clock(a.device) - t0
                for m in members:
                    m.metrics = open(os.devnull, "w")  # noqa: SIM115 - the member keeps it open, as a run does
                t0 = clock(a.device)
                ens.evaluate(members)
                e_eval = clock(a.device) - t0
                print(f"| {k} | one evaluation of every member | {s_eval * 1e3:.0f} | {e_eval * 1e3:.0f} | "
                      f"{s_eval / e_eval:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
