"""What an evaluation costs, per evaluator, against training, for each task's defaults.

    python benchmarks/evalcost.py [--steps 3000] [--rounds 5]

For a recipe of each task with nothing but its defaults (`task: {name: ...}`), eager and with
`train.compile: true`: the CPU time of one training step and of each evaluator's forward and
scoring at one evaluation (the measures of the task's default list; the attention measures record
their patterns on the `train` evaluator), medians over interleaved rounds after a warm-up (so
compilation is excluded), 1 thread. Then the share of a default run's CPU time that evaluation
takes: the default schedule's number of evaluations × their cost against the default number of
steps × a step's cost.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.measures import run_forwards, score  # noqa: E402
from clamp.names.yamlio import load_yaml  # noqa: E402
from clamp.recipe.spec import recipe_from_data  # noqa: E402
from clamp.training.train import Trainer  # noqa: E402

TASKS = ("fewshot", "repeat_tokens")


def costs(task: str, compile_: bool, rounds: int) -> tuple[float, dict[str, float], object]:
    r = recipe_from_data(*load_yaml(f"name: e\ntask: {{name: {task}}}\n", "e.yaml"))
    r = replace(r, train=replace(r.train, compile=compile_))
    tr = Trainer(r, 0)
    batches = [tr.task.train_batch(i, r.train.batch) for i in range(8)]
    tr.evaluate(probes=False)                                     # builds the evaluation sets
    todo = tr.eval_forwards(every=True)
    one = {key: [(key, b, rec)] for key, b, rec in todo}

    def evaluator(key):
        with torch.no_grad():
            out = run_forwards(tr.intervener, one[key], tr._eval_forward)
            score(out, one[key], tr.measures, tr.seam)
        tr.intervener.attach()
    fns = {"step": lambda: tr.train_step(batches[tr.step % 8]), **{k: (lambda k=k: evaluator(k)) for k in one}}
    for f in fns.values():                                        # warm-up (compiles where compiling)
        for _ in range(3):
            f()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            n = 20 if k == "step" else 3
            t = time.process_time()
            for _ in range(n):
                f()
            per[k].append(1e3 * (time.process_time() - t) / n)
    med = {k: statistics.median(v) for k, v in per.items()}
    return med.pop("step"), med, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU time (ms), medians of {a.rounds} interleaved rounds")
    for task in TASKS:
        for c in (False, True):
            step, evs, r = costs(task, c, a.rounds)
            t = r.train
            n_eval = sum(t.is_eval_step(s) for s in range(t.steps + 1))
            ev_total, tr_total = n_eval * sum(evs.values()), t.steps * step
            per = ", ".join(f"{k} {v:.1f}" for k, v in evs.items())
            mode = "compiled" if c else "eager"
            print(f"{task:<14} {mode:<8} step {step:.2f}; one evaluation {sum(evs.values()):.1f} "
                  f"({per}; eval_size {t.eval_size}); {n_eval} evaluations in {t.steps} steps: evaluation "
                  f"{ev_total / 1e3:.1f} s of {(ev_total + tr_total) / 1e3:.1f} s = "
                  f"{100 * ev_total / (ev_total + tr_total):.0f}%")


if __name__ == "__main__":
    main()
