"""The cost of clamp's path on foreign models: a training step through clamp (nnsight traces)
against a plain PyTorch training step of the same model, in one process.

    python benchmarks/hf_perf.py [--steps 100] [--repeats 5]     # ≈4 min on 1 core

Both train the same GPT2LMHeadModel / LlamaForCausalLM / GPTNeoXForCausalLM / the user module of
recipes/user_model/tiny_lm.py (the recipes of benchmarks/*_tokens.yaml: 2 layers, 4 heads, d_model
64, repeated tokens of length 64, batch 32) with Adam on the same pre-generated batches; the plain
step is `model(tokens)` (its `.logits`), cross-entropy on the copy, backward, torch's fused Adam.
CPU time, medians over blocks, the conditions interleaved.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf import interleaved  # noqa: E402  (benchmarks/perf.py)

from clamp.recipe.spec import load_recipe  # noqa: E402
from clamp.training.train import Trainer, loss_fn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLAMP = "interventions: [{clamp: 'blocks.0.attn.hook_pattern[0]', to: previous_token}]"


MODELS = {"gpt2": "gpt2/two_layer.yaml", "llama": "llama/two_layer.yaml", "gpt_neox": "gpt_neox/two_layer.yaml",
          "tiny_lm (user module)": "user_model/tiny_lm.yaml"}


def steps_for(family: str, batches: list) -> dict:
    path = ROOT / "recipes" / MODELS[family]
    out = {}
    plain_tr = Trainer(load_recipe(path), 0)
    model = plain_tr.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    i = iter(range(10 ** 9))

    def plain():
        b = batches[next(i) % len(batches)]
        y = model(b.tokens)
        loss = loss_fn(getattr(y, "logits", y), b.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out[f"{family}: plain PyTorch"] = plain
    conditions = (("clamp, no interventions", []),
                  ("clamp, one pattern clamp", ["interventions=" + CLAMP.split(": ", 1)[1]]))
    for name, sets in conditions:
        tr = Trainer(load_recipe(path, sets), 0)
        j = iter(range(10 ** 9))

        def step(tr=tr, j=j):
            tr.train_step(batches[next(j) % len(batches)])     # clamp's own step, on the shared batches
        out[f"{family}: {name}"] = step
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    fns: dict = {}
    for family in MODELS:
        task = Trainer(load_recipe(ROOT / "recipes" / MODELS[family]), 0).task
        fns.update(steps_for(family, [task.train_batch(k, 32) for k in range(32)]))
    med = {k: statistics.median(v) for k, v in interleaved(fns, a.steps, a.repeats).items()}   # perf.py's loop
    print(f"torch {torch.__version__}, 1 thread, CPU time, batch 32, length 64; "
          f"median of {a.repeats} x {a.steps} steps")
    print("| condition | ms/step | ratio to plain PyTorch |\n|---|---|---|")
    for k, t in med.items():
        base = med[k.split(":")[0] + ": plain PyTorch"]
        print(f"| {k} | {t:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
