"""Applies the active part of a Plan to a model, step by step.

Sits between compile (the Plan) and train (the loop). `Intervener.set_step(step)`
installs hook functions only when the set of active edits changes; when none is active
every hook point's `fn` is None and the forward pass is the plain model's. A clamp or
ablation writes `where(mask, value, x)` at its site (mask = selected heads ∧ the source's
rows), so nothing upstream gets gradient through the replaced elements.

`preserve`: a clamp/ablation that preserves later patterns or values makes each forward a
two-pass affair, as in Singh et al.'s code: a reference pass with every active edit except
the preserving ones records the later layers' patterns/values, and the real pass takes those
sites from it (other clamps at those sites still win). Gradients flow through both passes.

Freezes hold values bit for bit under Adam/AdamW/SGD (weight decay included): when a
window opens the slice's value is snapshotted and written back after every optimizer step
inside the window. What happens to its optimizer state is the freeze's `optimizer_state`:
`hold` (default) snapshots and restores the slice's moments and its own step count too
(optim.py splits the tensor's count per element), so at release the slice continues as
an optimizer that never saw the window (a fresh start if frozen from step 0);
`accumulate` lets moments and count advance from the slice's gradients while its values
are restored, so it is released with that history.

Several Interveners may share one model (training plan, probe plans): the one used last
must `attach()` before its forward passes; `forward` does that itself.

The Intervener reaches the model only through the model seam (seam.py): it installs functions
at sites, takes parameter slices for freezes and runs forward passes; it works unchanged on
any model family behind the seam.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..models.seam import HookFn, ModelSeam
from ..recipe.compile import Edit, Plan
from ..tasks import Batch
from ..values.base import Context
from .optim import STATE_KEYS, Optimizer


class _Frozen:
    """One frozen slice: its parameter, head index, and snapshots of its value and (held) optimizer state."""

    def __init__(self, p: nn.Parameter, idx: tuple, opt: Optimizer, hold: bool):
        self.p = p
        self.idx = idx                             # p[idx] is the frozen slice (the seam's parameter_slice)
        self.value = p.detach()[self.idx].clone()
        self.state: dict[str, Tensor] = {}
        if hold:
            opt.split_step(p)                      # the slice keeps its own step count from here on
            st = opt.state.get(p, {})
            self.state = {k: st[k][self.idx].clone() for k in STATE_KEYS
                          if isinstance(st.get(k), Tensor) and st[k].shape == p.shape}

    @torch.no_grad()
    def restore(self, opt: Optimizer) -> None:
        self.p[self.idx] = self.value
        st = opt.state.get(self.p, {})
        for k, v in self.state.items():
            st[k][self.idx] = v


def _head_mask(e: Edit, n_heads: int) -> Tensor | None:
    """Boolean mask broadcastable to the site's 4-d tensor, true on the selected heads."""
    if e.site.heads is None:
        return None
    shape = [1, 1, 1, 1]
    assert e.site.info.head_axis is not None
    shape[e.site.info.head_axis] = n_heads
    m = torch.zeros(n_heads, dtype=torch.bool)
    m[list(e.site.heads)] = True
    return m.view(shape)


class Intervener:
    """Owns the hook points of one model for one Plan."""

    def __init__(self, seam: ModelSeam, plan: Plan, optimizer: Optimizer | None = None,
                 seed: int = 0, donor: Callable[[str, int], Any] | None = None, task: Any = None):
        self.seam = seam
        self.plan = plan
        self.optimizer = optimizer                 # None: evaluation only (freezes are ignored)
        self.ctx = Context(batch=None, seam=seam, cache={}, seed=seed, donor=donor,   # type: ignore[arg-type]
                           task=task)
        self._active: tuple[Edit, ...] | None = None
        self._frozen: dict[Edit, _Frozen] = {}
        self._record: dict[str, Tensor] | None = None
        self._record_sites: frozenset[str] = frozenset()
        self._bounds = sorted(set(plan.boundaries) | {plan.steps})
        self._segment = (1, 0)                     # [lo, hi) of steps the installed edits are valid for
        self._main: dict[str, HookFn] = {}         # site name → fn for the real pass
        self._ref: dict[str, HookFn] | None = None # … for the reference pass (preserve), if any
        self._built: dict[tuple, tuple[dict[str, HookFn], dict[str, HookFn] | None]] = {}   # by configuration

    # -- configuration -------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Make the edits active at `step` (half-open windows) take effect."""
        self.ctx.step = step
        lo, hi = self._segment
        if lo <= step < hi:
            return
        i = bisect.bisect_right(self._bounds, step)
        self._segment = (self._bounds[i - 1] if i else 0, self._bounds[i] if i < len(self._bounds) else 1 << 62)
        active = self.plan.active(step)
        if active != self._active:
            self._active = active
            self._sync_freezes(active)
            self._build()

    def _sync_freezes(self, active: tuple[Edit, ...]) -> None:
        if self.optimizer is None:
            return
        want = [e for e in active if e.kind == "freeze"]
        for e in list(self._frozen):
            if e not in want:
                del self._frozen[e]
        for e in want:
            if e not in self._frozen:
                p, idx = self.seam.parameter_slice(e.site.name, e.site.heads)
                self._frozen[e] = _Frozen(p, idx, self.optimizer, hold=e.state != "accumulate")

    def _build(self) -> None:
        """Install the hook functions of this configuration (active edits, recorded sites), built once
        per configuration and reused, so a compiled forward (compiled.py) sees the same functions
        each time a configuration comes back and compiles each one once."""
        active = self._active or ()
        key = (active, self._record_sites)
        if key not in self._built:
            writers = [e for e in active if e.kind in ("clamp", "ablate")]
            preserved = [e for e in active if e.kind == "preserve"]
            main = self._fns(writers, {e.site.name for e in preserved}, self._record_sites, keep_ref=False)
            ref = None
            if preserved:
                plain = [e for e in writers if not e.preserve]
                ref = self._fns(plain, set(), {e.site.name for e in preserved}, keep_ref=True)
            self._built[key] = (main, ref)
        self._main, self._ref = self._built[key]
        self.attach()

    def _fns(self, writers: list[Edit], from_ref: set[str], record: Iterable[str], keep_ref: bool) -> dict[str, HookFn]:
        by_site: dict[str, list] = {}
        needs: set[str] = set()
        for e in writers:
            assert e.source is not None                 # clamps and ablations have one
            by_site.setdefault(e.site.name, []).append((e.source, e.site, _head_mask(e, self.plan.shape.heads)))
            needs.update(e.source.needs(e.site, self.plan.shape))
        record = set(record)
        fns = {}
        for name in set(by_site) | needs | from_ref | record:
            fns[name] = self._make_fn(name, by_site.get(name, []), name in needs, name in from_ref,
                                      name in record, keep_ref)
        return fns

    def _make_fn(self, name: str, writers: list, keep: bool, from_ref: bool, rec: bool, keep_ref: bool) -> HookFn:
        ctx = self.ctx

        def fn(x: Tensor) -> Tensor:
            if from_ref:
                assert ctx.reference is not None
                x = ctx.reference[name]
            for i, (source, site, hmask) in enumerate(writers):
                v, rows = source.value(x, site, ctx)
                if hmask is not None and hmask.device != x.device:     # moved once, to the model's device
                    hmask = hmask.to(x.device)
                    writers[i] = (source, site, hmask)
                m = rows if hmask is None else (hmask if rows is None else hmask & rows)
                x = v if m is None else torch.where(m, v, x)
            if keep:
                ctx.cache[name] = x
            if rec:
                if keep_ref:
                    assert ctx.reference is not None
                    ctx.reference[name] = x            # gradients flow through the reference pass
                elif self._record is not None:
                    self._record[name] = x.detach()
            return x
        return fn

    def attach(self, fns: dict[str, HookFn] | None = None) -> None:
        """Install this Intervener's hook functions on the model (replacing whatever was there)."""
        self.seam.install(self._main if fns is None else fns)

    def detach(self) -> None:
        self.seam.install({})

    # -- running -------------------------------------------------------------------------

    def forward(self, batch: Batch) -> Tensor:
        """Logits [batch, pos, n_out] of the model with the active edits applied."""
        out = None
        for fns in self.passes(batch):
            self.attach(fns)
            out = self.seam.forward(batch)
        assert out is not None
        return out

    @property
    def n_passes(self) -> int:
        """Forward passes per forward: 2 when a preserving edit is active (a reference pass first)."""
        return 1 if self._ref is None else 2

    def passes(self, batch: Batch) -> Iterator[dict[str, HookFn]]:
        """The site functions of each forward pass over `batch`, in order (the reference pass first
        when preserving); a pass must have run before the next is asked for. An ensemble
        (ensemble.py) runs its members' passes side by side."""
        ctx = self.ctx
        ctx.batch = batch
        if self._ref is not None:
            ctx.cache, ctx.reference = {}, {}
            yield self._ref
        ctx.cache = {}
        yield self._main

    def after_optimizer_step(self) -> None:
        assert self.optimizer is not None or not self._frozen
        for f in self._frozen.values():
            f.restore(self.optimizer)

    @contextmanager
    def recording(self, sites: Iterable[str]) -> Iterator[dict[str, Tensor]]:
        """Within the block, forward passes store the (post-edit) activations of `sites`."""
        out: dict[str, Tensor] = {}
        prev = self._record_sites
        self._record_sites, self._record = frozenset(sites), out
        self._build()
        try:
            yield out
        finally:
            self._record_sites, self._record = prev, None
            self._build()
