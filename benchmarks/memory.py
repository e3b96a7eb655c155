"""How close clamp's memory estimate (clamp/budget.py) is to the peak a run really reaches.

    python benchmarks/memory.py          # ≈1–2 min on 2 cores

Each case is a recipe (the demo's, or a task's defaults) with overrides that stress one term of the
estimate. It runs in a fresh process (so the peak is its own): build everything, three training
steps, one full evaluation, then report the peak resident memory (ru_maxrss). The estimate should
be above the peak (a refusal must never let a run through that then runs out of memory) and not
far above it (or `--max-memory` refuses runs that would fit).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = str(ROOT / "clamp" / "demo" / "demo.yaml")
CASES = [
    ("demo recipe", DEMO, []),
    ("repeated tokens, defaults", None, ["task.name=repeat_tokens"]),
    ("demo, eval_size 4000", DEMO, ["train.eval_size=4000"]),
    ("demo, batch 512", DEMO, ["train.batch=512"]),
    ("demo, MLP d_mlp 4096", DEMO, ["model.attn_only=false", "model.d_mlp=4096"]),
    ("few-shot, 100,000 classes", DEMO, ["task.classes=100000"]),
]

CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from clamp.recipe.spec import load_recipe, recipe_from_data
from clamp.training.train import Trainer
from clamp.recipe import budget
path, sets = sys.argv[1], sys.argv[2:]
recipe = load_recipe(path, sets) if path != "-" else recipe_from_data({}, overrides=sets)
est = budget.estimate(recipe)
t = Trainer(recipe, recipe.seeds[0])
for _ in range(3):
    t.train_step()
t.evaluate()
print(json.dumps({"estimate": est.total, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> None:
    print("| case | estimate | measured peak RSS | estimate / peak |")
    print("|---|---|---|---|")
    for name, path, sets in CASES:
        r = subprocess.run([sys.executable, "-c", CHILD, path or "-", *sets], capture_output=True, text=True,
                           cwd=ROOT, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {name} | {d['estimate'] / 2**20:.0f} MiB | {d['peak'] / 2**20:.0f} MiB | "
              f"{d['estimate'] / d['peak']:.2f} |")


if __name__ == "__main__":
    main()
