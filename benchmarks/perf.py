"""Overhead of clamp's training step against plain PyTorch, measured in one process.

    python benchmarks/perf.py [--steps 150] [--repeats 12] [--threads 1] [--no-compile]

The plain loop is an independent nanoGPT-style implementation of the same model (fused QKV,
RoPE, pre-LayerNorm, attention only) with no hook points, trained with the same optimizer on
the same pre-generated batches, so data generation is excluded from both. Ratios are
clamp / plain (lower is better; 1.0 = no overhead). Conditions:

    no interventions       the hook points exist but every fn is None
    clamp one head         layer-1 head 3's query row clamped to the induction pattern
    ablate 7 heads         the single-head setting of docs/science.md §1 (values of 7 heads zeroed)
    ablate + preserve      an ablation with later patterns preserved: two forward passes
    freeze one head        W_Q[2] of layer 0 frozen (value, moments and its own step count held)

Timings are CPU time (process_time), medians over `repeats` blocks of `steps` steps, the blocks of
all conditions interleaved, after a warm-up. The optimizer rows time one optimizer step alone,
against torch's fused Adam (the plain loop's optimizer). Each ratio comes with a 95% interval: the
blocks of one round are timed back to back, so each round gives a paired ratio (condition / plain
of that round), and the interval is a bootstrap of the median over the rounds' ratios. The
machine's load average is printed before and after. "plain PyTorch, torch.compile" is the same
plain step with its model compiled (compilation excluded by the warm-up), and "..., fused attention"
the same with its attention written as a broadcast product and sum (independent code again),
which is how clamp's compiled path computes attention over a few positions (models/builtin.py `qk`,
`pv`); the "compiled" rows are clamp's step with `train.compile: true` (its forward and
interventions compiled, once per window; its optimizer eager), each also given as a ratio to the
compiled plain step with fused attention: clamp's own overhead, like for like.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.names.yamlio import load_yaml
from clamp.recipe.spec import recipe_from_data  # noqa: E402
from clamp.training.train import Trainer, loss_fn  # noqa: E402

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
    "nnsight backend, no interventions": "NNSIGHT",
    "nnsight backend, clamp one head": ("NNSIGHT\n"
                                        "interventions: [{clamp: blocks.1.attn.hook_pattern[3], to: induction}]"),
    "compiled, no interventions": "COMPILE",
    "compiled, clamp one head": "COMPILE\ninterventions: [{clamp: blocks.1.attn.hook_pattern[3], to: induction}]",
    "compiled, ablate 7 heads": "COMPILE\ninterventions: [{ablate: blocks.1.attn.hook_v[0,1,2,4:8]}]",
    "compiled, ablate + preserve": "COMPILE\ninterventions: [{ablate: blocks.0.attn.hook_v[2], preserve: [patterns]}]",
    "compiled, freeze one head": "COMPILE\ninterventions: [{freeze: blocks.0.attn.W_Q[2]}]",
}
NNSIGHT_MODEL = "model: {layers: 2, heads: 8, d_model: 64, attn_only: true, norm: pre, pos: rope, backend: nnsight}"


class Plain(torch.nn.Module):
    """The same computation as clamp's model, written without hooks (independent code)."""

    def __init__(self, src, fused_attention: bool = False):
        super().__init__()
        self.fused_attention = fused_attention     # attention as a broadcast product and sum (for torch.compile)
        P = {n: p.detach().clone() for n, p in src.named_parameters()}
        self.p = torch.nn.ParameterDict({n.replace(".", "__"): torch.nn.Parameter(v) for n, v in P.items()})
        self.L, self.H = src.shape.layers, src.shape.heads
        e, T = src.shape.d_head, src.shape.n_ctx
        inv = 10000.0 ** (-torch.arange(0, e, 2).float() / e)
        ang = torch.arange(T).float()[:, None] * inv[None]
        self.cos, self.sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
        self.causal = torch.ones(T, T).tril().bool()
        self.sign = torch.tensor([-1.0, 1.0])                    # (x0, x1) → (-x1, x0): RoPE's rotation

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
            rot = lambda t: t * self.cos[:T] + (t.unflatten(-1, (-1, 2)).flip(-1) * self.sign).flatten(-2) \
                * self.sin[:T]  # noqa: E731
            q, k = rot(q), rot(k)
            if self.fused_attention:                                                 # [B, H, T, T], then [B, H, T, e]
                att = (q[:, :, :, None, :] * k[:, :, None, :, :]).sum(-1) / math.sqrt(e)
                att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(-1)
                z = (att[..., None] * v[:, :, None, :, :]).sum(-2)
            else:
                att = (q @ k.transpose(-1, -2) / math.sqrt(e)).masked_fill(~self.causal[:T, :T], float("-inf"))
                z = att.softmax(-1) @ v                                              # [B, H, T, e]
            h = h + z.transpose(1, 2).reshape(B, T, H * e) @ Wo.reshape(H * e, d)
        x = F.layer_norm(h, (h.shape[-1],), self.w("ln_final.w"), self.w("ln_final.b"))
        return x @ self.w("unembed.W_U") + self.w("unembed.b_U")


def stepper(model, opt, batches):
    """One plain training step per call, on the shared batches in turn."""
    it = iter(range(10 ** 9))

    def step():
        b = batches[next(it) % len(batches)]
        loss = loss_fn(model(b.tokens, b.vectors, b.is_vector), b.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


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
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled plain step")
    a = ap.parse_args()
    load0 = os.getloadavg()
    torch.set_num_threads(a.threads)
    base = recipe_from_data(*load_yaml(BASE, "perf.yaml"))
    ref = Trainer(base, 0)
    batches = [ref.task.train_batch(i, 32) for i in range(64)]

    plain = Plain(ref.model)
    popt = torch.optim.Adam(plain.parameters(), lr=1e-4, fused=True)

    # same numbers as clamp's model before any step (the reference is independent code)
    b = batches[0]
    torch.testing.assert_close(plain(b.tokens, b.vectors, b.is_vector), ref.model(b.tokens, b.vectors, b.is_vector),
                               rtol=1e-5, atol=1e-5)
    steps = {"plain PyTorch": stepper(plain, popt, batches)}
    if not a.no_compile:                           # the same module and optimizer, its forward compiled
        steps["plain PyTorch, torch.compile"] = stepper(torch.compile(plain), popt, batches)
        fused = Plain(ref.model, fused_attention=True)     # what clamp's compiled path does over a few positions
        fopt = torch.optim.Adam(fused.parameters(), lr=1e-4, fused=True)
        steps["plain PyTorch, torch.compile, fused attention"] = stepper(torch.compile(fused), fopt, batches)
    for name, extra in CONDITIONS.items():
        text = BASE + extra
        if extra.startswith("NNSIGHT"):                       # the same model, reached through nnsight traces
            text = BASE.replace(BASE.splitlines()[1], NNSIGHT_MODEL) + extra.removeprefix("NNSIGHT")
        if extra.startswith("COMPILE"):                       # train.compile: the forward with its hooks compiled
            text = BASE.replace("lr: 1.0e-4}", "lr: 1.0e-4, compile: true}") + extra.removeprefix("COMPILE")
        r = recipe_from_data(*load_yaml(text, "perf.yaml"))
        tr = Trainer(r, 0)
        j = iter(range(10 ** 9))

        def step(tr=tr, j=j):
            tr.train_step(batches[next(j) % 64])               # clamp's own step, on the shared batches
        steps[f"clamp: {name}"] = step
    steps.update(optimizer_steps(ref.model))
    per = interleaved(steps, a.steps, a.repeats)
    times = {k: statistics.median(v) for k, v in per.items()}
    t_eval = time_blocks(lambda: ref.evaluate(probes=False), 5, a.repeats)
    io = base.task.io()
    print(f"torch {torch.__version__}, {a.threads} thread(s), CPU time, batch 32, few-shot task "
          f"({io.n_ctx} positions), 2 layers x 8 heads, d_model 64; blocks interleaved, median of {a.repeats} "
          f"rounds of {a.steps} steps; load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} cores)")
    comp = "plain PyTorch, torch.compile, fused attention"
    print(f"{'condition':<48} {'ms/step':>8} {'ratio':>6}  95% interval" + ("   ÷ compiled plain (fused), 95% interval"
                                                                          if comp in per else ""))
    for name, t in times.items():
        ref_name = "optimizer: torch Adam (fused)" if name.startswith("optimizer") else "plain PyTorch"
        ratio = statistics.median(x / y for x, y in zip(per[name], per[ref_name]))
        lo, hi = ratio_interval(per[name], per[ref_name])
        line = f"{name:<48} {t:8.3f} {ratio:6.2f}  [{lo:.2f}, {hi:.2f}]"
        if comp in per and name.startswith("clamp"):
            r2 = statistics.median(x / y for x, y in zip(per[name], per[comp]))
            lo2, hi2 = ratio_interval(per[name], per[comp])
            line += f"   {r2:6.2f}  [{lo2:.2f}, {hi2:.2f}]"
        print(line)
    print(f"{f'evaluation ({len(ref._evaluators)} evaluators x {base.train.eval_size})':<48} {t_eval:8.1f} ms")


def ratio_interval(xs: list[float], refs: list[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median of the paired per-round ratios x / ref."""
    import numpy as np
    r = np.asarray(xs) / np.asarray(refs)
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, len(r), size=(n, len(r)))], axis=1)
    return float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def optimizer_steps(model) -> dict:
    """One optimizer step over the model's parameters (fixed gradients): torch's fused and
    single-tensor Adam, clamp's Adam, and clamp's Adam with one tensor's step count split per
    element (what a held freeze does). Ratios are to torch's fused Adam."""
    from clamp.training.optim import Adam
    out = {}
    for name, make in [("optimizer: torch Adam (fused)", lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True)),
                       ("optimizer: torch Adam (single-tensor)",
                        lambda ps: torch.optim.Adam(ps, lr=1e-4, foreach=False)),
                       ("optimizer: clamp Adam", lambda ps: Adam(ps, lr=1e-4)),
                       ("optimizer: clamp Adam, one count split", lambda ps: Adam(ps, lr=1e-4))]:
        ps = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        opt = make(ps)
        if name.endswith("split"):
            opt.split_step(ps[3])
        out[name] = opt.step
    return out


def interleaved(fns: dict, steps: int, repeats: int) -> dict:
    """CPU ms per call of each function in each round: blocks of `steps` calls interleaved across functions."""
    for fn in fns.values():                                   # warm-up
        for _ in range(20):
            fn()
    per: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.process_time()
            for _ in range(steps):
                fn()
            per[k].append(1e3 * (time.process_time() - t0) / steps)
    return per


if __name__ == "__main__":
    main()
