"""clamp's optimizers: Adam, AdamW and SGD whose step count can differ per element.

Sits under hooks.py (freezes) and train.py (the loop). torch's Adam keeps one step counter
per tensor; a freeze acts on a slice of a tensor (one head of W_Q, one member of an
ensemble), and a slice whose optimizer state is *held* through a freeze must come out of
it with its own step count, or its bias correction is wrong at release (a slice frozen over
[0, 400) would otherwise take its first updates with the bias correction of step 400 on
moments that start from zero: ~1.8 x lr on every element).

So each parameter's state holds `step` as a 0-d tensor until a held freeze splits it
(`split_step`) into a tensor of the parameter's shape; the update is the same arithmetic
either way, bit for bit torch's single-tensor Adam/AdamW for every element given its count:

    g  = grad (+ wd * p for adam)          p *= 1 - lr * wd   (adamw)
    t += 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

State is created at construction (m = v = 0, t = 0), so a snapshot taken before the first
step is well defined. Parameters whose gradient is None are skipped (their t does not move),
as in torch. state_dict/load_state_dict are torch.optim.Optimizer's.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class Adam(torch.optim.Optimizer):
    """Adam (`decoupled=False`, L2 weight decay added to the gradient) or AdamW (`decoupled=True`)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled=decoupled))
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                st["step"] = torch.zeros((), dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def split_step(self, p: Tensor) -> None:
        """Give every element of `p` its own step count (from now on; values unchanged)."""
        st = self.state[p]
        if st["step"].dim() == 0:
            st["step"] = st["step"].expand(p.shape).clone()

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        assert closure is None, "clamp's optimizers take no closure"
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if wd:
                    if group["decoupled"]:
                        p.mul_(1 - lr * wd)
                    else:
                        g = g.add(p, alpha=wd)
                t = st["step"]
                t.add_(1)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                sqrt_v = v.sqrt()
                if t.dim() == 0:                           # one count for the tensor
                    _update(p, m, sqrt_v, int(t.item()), lr, b1, b2, eps)
                else:                                      # a count per element: the same scalar arithmetic
                    base = p.clone()                       # per distinct count (usually two), so each
                    for n in torch.unique(t).tolist():     # element's update is bit for bit torch's
                        upd = base.clone()
                        _update(upd, m, sqrt_v, int(n), lr, b1, b2, eps)
                        p.copy_(torch.where(t == n, upd, p))
        return None


def _update(p: Tensor, m: Tensor, sqrt_v: Tensor, n: int, lr: float, b1: float, b2: float, eps: float) -> None:
    """p -= lr / (1 - b1^n) * m / (sqrt(v) / sqrt(1 - b2^n) + eps), in torch's order of operations."""
    bc1, bc2 = 1 - b1 ** n, 1 - b2 ** n
    denom = (sqrt_v / (bc2 ** 0.5)).add_(eps)
    p.addcdiv_(m, denom, value=-lr / bc1)


class SGD(torch.optim.Optimizer):
    """Plain SGD with L2 weight decay (no state: a freeze has nothing to hold but the values)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    def split_step(self, p: Tensor) -> None:
        pass

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        assert closure is None, "clamp's optimizers take no closure"
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not wd else p.grad.add(p, alpha=wd)
                p.add_(g, alpha=-lr)
        return None


STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer a recipe names: adam | adamw | sgd."""
    if name == "sgd":
        return SGD(params, lr=lr, weight_decay=weight_decay)
    return Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, decoupled=(name == "adamw"))
