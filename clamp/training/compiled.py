"""Compiled forward passes: `train.compile`, torch.compile over clamp's forward with its interventions.

Run layer, under train.py and ensemble.py. `Compiled(fn)` is `fn` (a forward pass and its loss,
hook functions included) compiled by torch.compile. The hook functions an Intervener installs are
plain Python closures at the model's hook points; torch.compile traces through them into the same
graph as the model, so an intervention costs what its tensor operations cost. The Intervener
builds its hook functions once per configuration (the set of active edits, the sites recorded)
and reuses them, so the compiled graphs are guarded by configuration: a new window of active
interventions compiles once, and returning to a configuration reuses its graph. Value sources are
written branch-free (no Python `if` on tensor data) so that a window is one graph; one that is
not (a user's plug-in with a data-dependent branch, a graft reading another run) still runs
correctly, split into several graphs.

Where compilation fails (no C++ compiler, an unsupported platform or operation), the call is
retried eagerly: if the eager call succeeds the failure was the compiler's, and every later call
runs eagerly, with the reason kept in `note` (summary.json's `compile`); if it fails too, the
error is the run's own and is raised as it is.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

RECOMPILE_LIMIT = 64        # graphs per compiled function: windows of interventions, train/eval modes
BACKEND = "inductor"          # torch.compile backend (tests also use "aot_eager": the same graphs, no codegen)


class Compiled:
    """`fn` compiled (or, after a compiler failure, `fn` itself)."""

    def __init__(self, fn: Callable[..., Any], what: str = "the training step"):
        self.fn = fn
        self.what = what
        self.note: str | None = None            # why it runs eagerly, once it does
        # shapes static at first; a size that changes (an ensemble that loses a member) is made
        # dynamic on the next compile (torch.compile's default), not recompiled for every size
        self._compiled: Callable[..., Any] | None = torch.compile(fn, backend=BACKEND)
        # one graph per configuration: more than dynamo's default of 8 per function (raised, never lowered)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the compiler's failures are many kinds; eager decides
            compiler_error = e
        out = self.fn(*args, **kwargs)           # raises the run's own error, if it is one
        self.fall_back(compiler_error)
        return out

    def fall_back(self, e: BaseException) -> None:
        """Run eagerly from now on, because compiling failed with `e` (also where its backward, which
        torch compiles at the first backward pass, failed: train.py retries that step eagerly)."""
        self._compiled = None
        self.note = f"{self.what} runs eagerly: torch.compile failed ({_reason(e)})"

    @property
    def eager(self) -> bool:
        return self._compiled is None

    def summary(self) -> dict:
        return {"enabled": True, "eager_fallback": self.note}


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:200]}"


def summary_of(fn: Callable[..., Any]) -> dict:
    """summary.json's `compile` for a step function: enabled, and why it fell back to eager if it did."""
    return fn.summary() if isinstance(fn, Compiled) else {"enabled": False}


def maybe_compiled(fn: Callable[..., Any], enabled: bool, what: str = "the training step") -> Callable[..., Any]:
    """`Compiled(fn)` when `enabled`, else `fn` unchanged."""
    return Compiled(fn, what) if enabled else fn
