"""Overhead of clamp's training step against plain PyTorch, measured in one process.

    python benchmarks/perf.py [--steps 300] [--repeats 5] [--threads 1] [--device cpu]

The plain loop is an independent nanoGPT-style implementation of the same model (fused QKV,
RoPE, pre-LayerNorm, attention only) with no hook points, trained with the same optimizer on
the same pre-generated batches, so data generation is excluded from both. Ratios are
clamp / plain (lower is better; 1.0 = no overhead). Conditions:

    no interventions       the hook points exist but every fn is None
    clamp one head         layer-1 head 3's query row clamped to the induction pattern
    ablate 7 heads         the single-head setting of docs/science.md §1 (values of 7 heads zeroed)
    ablate + preserve      an ablation with later patterns preserved: two forward passes
    freeze one head        W_Q[2] of layer 0 frozen (snapshot restored after each Adam step)

Timings are medians over `repeats` blocks of `steps` steps, after a warm-up.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.schema import load_yaml  # noqa: E402
from clamp.spec import recipe_from_data  # noqa: E402
from clamp.train import Trainer, loss_fn  # noqa: E402

BASE = """
model: {layers: 2, heads: 8, d_model: 64, attn_only: true, norm: pre, pos: rope}
task: {name: fewshot}
train: {steps: 100000, batch: 32, lr: 1.0e-4}
"""
CONDITIONS = {
    "no interventions": "",
    "clamp one head": "interventions: [{clamp: blocks.1.attn.hook_pattern[3], to: induction}]",
    "ablate 7 heads": "interventions: [{ablate: blocks.1.attn.hook_v[0,1,2,4:8]}]",
    "ablate + preserve": "interventions: [{ablate: blocks.0.attn.hook_v[2], preserve: [patterns]}]",
    "freeze one head": "interventions: [{freeze: blocks.0.attn.W_Q[2]}]",
}


class Plain(torch.nn.Module):
    """The same computation as clamp's model, written without hooks (independent code)."""

    def __init__(self, src):
        super().__init__()
        P = {n: p.detach().clone() for n, p in src.named_parameters()}
        self.p = torch.nn.ParameterDict({n.replace(".", "__"): torch.nn.Parameter(v) for n, v in P.items()})
        self.L, self.H = src.shape.layers, src.shape.heads
        e, T = src.shape.d_head, src.shape.n_ctx
        inv = 10000.0 ** (-torch.arange(0, e, 2).float() / e)
        ang = torch.arange(T).float()[:, None] * inv[None]
        self.cos, self.sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
        self.causal = torch.ones(T, T).tril().bool()

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def forward(self, tokens, vectors, is_vector):
        B, T = tokens.shape
        h = torch.where(is_vector[..., None], vectors @ self.w("embed.W_x"), self.w("embed.W_E")[tokens])
        for L in range(self.L):
            b = f"blocks.{L}"
            x = F.layer_norm(h, (h.shape[-1],), self.w(f"{b}.ln1.w"), self.w(f"{b}.ln1.b"))
            Wq, Wk, Wv, Wo = (self.w(f"{b}.attn.W_{c}") for c in "QKVO")
            H, d, e = Wq.shape
            W = torch.cat([Wq, Wk, Wv]).permute(1, 0, 2).reshape(d, 3 * H * e)
            q, k, v = (x @ W).view(B, T, 3, H, e).permute(2, 0, 3, 1, 4)          # [B, H, T, e] each
            rot = lambda t: t * self.cos[:T] + torch.stack((-t[..., 1::2], t[..., 0::2]), -1).flatten(-2) \
                * self.sin[:T]  # noqa: E731
            q, k = rot(q), rot(k)
            att = (q @ k.transpose(-1, -2) / math.sqrt(e)).masked_fill(~self.causal[:T, :T], float("-inf"))
            z = att.softmax(-1) @ v                                                  # [B, H, T, e]
            h = h + z.transpose(1, 2).reshape(B, T, H * e) @ Wo.reshape(H * e, d)
        x = F.layer_norm(h, (h.shape[-1],), self.w("ln_final.w"), self.w("ln_final.b"))
        return x @ self.w("unembed.W_U") + self.w("unembed.b_U")


def time_blocks(step, steps, repeats):
    for _ in range(30):
        step()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        out.append((time.perf_counter() - t) / steps * 1e3)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = recipe_from_data(*load_yaml(BASE, "perf.yaml"))
    ref = Trainer(base, 0)
    batches = [ref.task.train_batch(i, 32) for i in range(64)]

    plain = Plain(ref.model)
    popt = torch.optim.Adam(plain.parameters(), lr=1e-4, fused=True)
    it = iter(range(10 ** 9))

    def plain_step():
        b = batches[next(it) % 64]
        loss = loss_fn(plain(b.tokens, b.vectors, b.is_vector), b.targets)
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()

    # same numbers as clamp's model before any step (the reference is independent code)
    b = batches[0]
    torch.testing.assert_close(plain(b.tokens, b.vectors, b.is_vector), ref.model(b.tokens, b.vectors, b.is_vector),
                               rtol=1e-5, atol=1e-5)
    rows = []
    t_plain = time_blocks(plain_step, a.steps, a.repeats)
    rows.append(("plain PyTorch", t_plain, 1.0))
    for name, extra in CONDITIONS.items():
        r = recipe_from_data(*load_yaml(BASE + extra, "perf.yaml"))
        tr = Trainer(r, 0)
        j = iter(range(10 ** 9))

        def step(tr=tr, j=j):
            tr.intervener.set_step(tr.step)
            b = batches[next(j) % 64]
            loss = loss_fn(tr.intervener.forward(b), b.targets)
            tr.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            tr.optimizer.step()
            tr.intervener.after_optimizer_step()
            tr.step += 1
        t = time_blocks(step, a.steps, a.repeats)
        rows.append((f"clamp: {name}", t, t / t_plain))
    t_eval = time_blocks(lambda: ref.evaluate(probes=False), 5, a.repeats)
    print(f"torch {torch.__version__}, {a.threads} thread(s), batch 32, few-shot task defaults (8 pairs + query = 17 positions), 2 layers x 8 heads, d_model 64")
    print(f"{'condition':<34} {'ms/step':>8} {'ratio':>6}")
    for name, t, ratio in rows:
        print(f"{name:<34} {t:8.3f} {ratio:6.2f}")
    print(f"{'evaluation (4 evaluators x 1000)':<34} {t_eval:8.1f} ms")


if __name__ == "__main__":
    main()
