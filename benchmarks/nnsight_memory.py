"""Resident memory along a long run through the nnsight backend (nnsight has had memory that grew
across repeated traces): does it stay flat?

    python benchmarks/nnsight_memory.py [--steps 10000]      # ≈2 min on 1 core

The demo's model (2 layers × 8 heads, few-shot task, batch 32) with one clamped head, trained
through `model.backend: nnsight`; RSS (current, from /proc) every 1,000 steps.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.names.yamlio import load_yaml  # noqa: E402
from clamp.recipe.spec import recipe_from_data  # noqa: E402
from clamp.training.train import Trainer  # noqa: E402

RECIPE = """
model: {layers: 2, heads: 8, d_model: 64, backend: nnsight}
task: {name: fewshot}
train: {steps: 1000000, batch: 32, lr: 1.0e-4}
interventions: [{clamp: blocks.1.attn.hook_pattern[3], to: induction}]
"""


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tr = Trainer(recipe_from_data(*load_yaml(RECIPE, "nnsight_memory.yaml")), 0)
    t0 = time.process_time()
    print("| step | RSS (MiB) | CPU ms/step so far |\n|---|---|---|")
    for step in range(a.steps + 1):
        if step % 1000 == 0:
            ms = 1e3 * (time.process_time() - t0) / max(step, 1)
            print(f"| {step} | {rss_mib():.0f} | {ms:.2f} |", flush=True)
        if step < a.steps:
            tr.train_step()


if __name__ == "__main__":
    main()
