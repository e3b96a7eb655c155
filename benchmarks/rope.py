"""RoPE as clamp applies it (one complex multiply per pair) against the same rotation in real
arithmetic, written the usual way (each pair's partner by `flip`, times ±1), forward and backward.

    python benchmarks/rope.py [--rounds 30] [--calls 50]

Shapes [batch, pos, head, d_head]: the few-shot step (32 x 5 x 8 x 8), an ensemble of 8 such members
folded into the batch (256 x 5 x 8 x 8), and the token task (32 x 64 x 4 x 16). CPU time, 1 thread,
the two forms interleaved per round; the ratio is clamp's time over the real form's, and `max diff`
is the largest difference of their outputs (float32).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clamp.models.builtin import apply_rope, rope_tables  # noqa: E402

SHAPES = {"few-shot step": (32, 5, 8, 8), "ensemble of 8": (256, 5, 8, 8), "token task": (32, 64, 4, 16)}


def real_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, head, d_head]; cos, sin [pos, d_head] (each pair's angle, repeated)."""
    T = x.shape[1]
    sign = torch.tensor([-1.0, 1.0], dtype=x.dtype)
    rot = (x.unflatten(-1, (-1, 2)).flip(-1) * sign).flatten(-2)              # (-x1, x0) per pair
    return x * cos[:T, None, :] + rot * sin[:T, None, :]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU time, forward + backward, {a.rounds} rounds x {a.calls} calls")
    print(f"{'shape':<16} {'real ms':>8} {'clamp ms':>9} {'ratio':>6} {'max diff':>9}")
    for name, shape in SHAPES.items():
        x = torch.randn(*shape, requires_grad=True)
        rot = rope_tables(shape[1], shape[3])                                   # [pos, 1, d_head/2, (cos, sin)]
        cos = rot[:, 0, :, 0].repeat_interleave(2, -1)                          # [pos, d_head]
        sin = rot[:, 0, :, 1].repeat_interleave(2, -1)
        forms = {"real": (real_rope, (x, cos, sin)), "clamp": (apply_rope, (x, rot))}
        diff = (real_rope(x, cos, sin) - apply_rope(x, rot)).abs().max().item()
        spent = dict.fromkeys(forms, 0.0)
        for _ in range(a.rounds):
            for k, (f, args) in forms.items():
                t = time.process_time()
                for _ in range(a.calls):
                    f(*args).sum().backward()
                spent[k] += time.process_time() - t
        n = a.rounds * a.calls
        print(f"{name:<16} {1e3 * spent['real'] / n:8.3f} {1e3 * spent['clamp'] / n:9.3f} "
              f"{spent['clamp'] / spent['real']:6.2f} {diff:9.1e}")


if __name__ == "__main__":
    main()
