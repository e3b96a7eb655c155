"""clamp's optimizers: Adam, AdamW and SGD whose step count can differ per element.

Sits under hooks.py (freezes) and train.py (the loop). torch's Adam keeps one step counter
per tensor; a freeze acts on a slice of a tensor (one head of W_Q, one member of an
ensemble), and a slice whose optimizer state is *held* through a freeze must come out of
it with its own step count, or its bias correction is wrong at release (a slice frozen over
[0, 400) would otherwise take its first updates with the bias correction of step 400 on
moments that start from zero: ~1.8 x lr on every element).

So each parameter's state holds `step` as a 0-d tensor until a held freeze splits it
(`split_step`) into a tensor of the parameter's shape. The update is torch's fused Adam/AdamW
either way, so every element moves bit for bit as torch's own fused optimizer would move it
given its step count (tests/test_optim.py):

    g  = grad (+ wd * p for adam)          p *= 1 - lr * wd   (adamw)
    t += 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

A split tensor is updated once per distinct count among its elements (on a copy each; usually
two: the frozen slice's and the rest).

State is created at construction (m = v = 0, t = 0), so a snapshot taken before the first
step is well defined. Parameters whose gradient is None are skipped (their t does not move),
as in torch. state_dict/load_state_dict are torch.optim.Optimizer's.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim.adam import adam as _functional_adam


class Optimizer(torch.optim.Optimizer):
    """What the Intervener needs of an optimizer besides torch's: `split_step(p)` gives every element
    of `p` its own step count, so a frozen slice can hold its own."""

    def split_step(self, p: Tensor) -> None:
        raise NotImplementedError


class Adam(Optimizer):
    """Adam (`decoupled=False`, L2 weight decay added to the gradient) or AdamW (`decoupled=True`)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False, members: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled=decoupled))
        self.members = members
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)   # fused Adam: on p's device
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def load_state_dict(self, state_dict) -> None:
        """torch's, with every step count moved to its parameter's device (torch's fused Adam wants it
        there; torch's loader leaves it on the device it was saved from)."""
        super().load_state_dict(state_dict)
        for p, st in self.state.items():
            if isinstance(st.get("step"), Tensor) and st["step"].device != p.device:
                st["step"] = st["step"].to(p.device)

    def split_step(self, p: Tensor) -> None:
        """Give every element of `p` its own step count (from now on; values unchanged)."""
        st = self.state[p]
        if st["step"].dim() == 0:
            st["step"] = st["step"].expand(p.shape).clone()

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "clamp's optimizers take no closure"
        for group in self.param_groups:
            whole: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.state[p]["step"].dim() == 0:
                    whole.append(p)
                else:
                    self._per_count(p, group)
            if whole:
                st = [self.state[p] for p in whole]
                self._adam(whole, [p.grad for p in whole], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                           [s["step"] for s in st], group)
        return None

    def _adam(self, params, grads, exp_avgs, exp_avg_sqs, steps, group) -> None:
        """torch's fused update; with `members`, every tensor's leading-axis slices are updated as tensors
        of their own, so each member's elements take the same code path (vectorised or not) that they
        would take in a tensor of its own: an ensemble member moves bit for bit as its run alone."""
        if not self.members:
            return _fused(params, grads, exp_avgs, exp_avg_sqs, steps, group)
        # A tensor whose member slices are whole multiples of the kernel's vector blocks (64 floats
        # covers every CPU's) runs as one: every element is on the vectorised path, alone or stacked.
        whole = [i for i, p in enumerate(params) if p[0].numel() % 64 == 0 and steps[i].dim() == 0]
        split = [i for i in range(len(params)) if i not in set(whole)]
        if whole:
            _fused(_pick(params, whole), _pick(grads, whole), _pick(exp_avgs, whole), _pick(exp_avg_sqs, whole),
                   _pick(steps, whole), group)
        if split:
            ps, gs, ms, vs = ([t for i in split for t in ts[i].unbind(0)]
                              for ts in (params, grads, exp_avgs, exp_avg_sqs))
            counts = [steps[i].clone() for i in split for _ in range(params[i].shape[0])]
            _fused(ps, gs, ms, vs, counts, group)
            for i in split:
                steps[i].add_(1)

    def _per_count(self, p: Tensor, group: dict) -> None:
        """One step of a tensor whose elements have their own step counts: torch's fused update on a
        copy per distinct count (usually two), each element taken from the copy of its own count."""
        st = self.state[p]
        t = st["step"]
        base_p, base_m, base_v = p.clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone()
        for i, n in enumerate(torch.unique(t).tolist()):
            q, m, v = base_p.clone(), base_m.clone(), base_v.clone()
            self._adam([q], [p.grad], [m], [v], [torch.tensor(float(n), device=p.device)], group)
            if i == 0:                                     # moments do not depend on the count
                st["exp_avg"].copy_(m)
                st["exp_avg_sq"].copy_(v)
            p.copy_(torch.where(t == n, q, p))
        t.add_(1)


def _pick(ts: list, idx: list[int]) -> list:
    return [ts[i] for i in idx]


def _fused(params, grads, exp_avgs, exp_avg_sqs, steps, group) -> None:
    """torch's fused Adam/AdamW (functional form): increments `steps` and updates in place."""
    _functional_adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False,
                     beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
                     weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                     decoupled_weight_decay=group["decoupled"])


class SGD(Optimizer):
    """Plain SGD with L2 weight decay (no state: a freeze has nothing to hold but the values)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, weight_decay: float = 0.0, members: bool = False):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.members = members

    def split_step(self, p: Tensor) -> None:
        pass

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "clamp's optimizers take no closure"
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                for q, g in zip(p.unbind(0), p.grad.unbind(0)) if self.members else ((p, p.grad),):
                    if wd:
                        g = g.add(q, alpha=wd)
                    q.add_(g, alpha=-lr)
        return None


STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                   weight_decay: float = 0.0, members: bool = False) -> Optimizer:
    """The optimizer a recipe names: adam | adamw | sgd. `members`: every parameter has a leading
    member axis (an ensemble's stack) and each member's slice is updated as a tensor of its own."""
    if name == "sgd":
        return SGD(params, lr=lr, weight_decay=weight_decay, members=members)
    return Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, decoupled=(name == "adamw"), members=members)
