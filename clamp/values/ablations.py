"""Ablations (zero, mean, resample; each also usable as a clamp) and constants.

Model layer (values/): built-in value sources, registered on import.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..names.errors import InputError
from ..names.schema import opt
from ..names.sites import layout_sizes
from .base import NoOptions, ValueSource, register_value


@register_value
class Zero(ValueSource):
    name, Options, ablation = "zero", NoOptions, True
    detached = True
    doc = "all zeros"

    def value(self, x, site, ctx):
        return torch.zeros_like(x), None


@register_value
class Mean(ValueSource):
    name, Options, ablation = "mean", NoOptions, True
    detached = True
    doc = "the batch mean at each position (detached)"

    def value(self, x, site, ctx):
        return x.detach().mean(dim=0, keepdim=True).expand_as(x), None


@register_value
class Resample(ValueSource):
    name, Options, ablation = "resample", NoOptions, True
    detached = True
    doc = "the activation of another sequence of the batch (rolled by one; detached)"

    def value(self, x, site, ctx):
        return x.detach().roll(1, dims=0), None


MAX_CONSTANT = 1 << 20          # elements in a constant given as a list or a file


@dataclass(frozen=True)
class ConstantOptions:
    value: Any = opt(0.0, path=True, doc="a number; a nested list (a tensor); or a .pt / .npy file of a tensor "
                                         "(relative to the recipe). A tensor is one sequence's value at the site "
                                         "(its layout without the batch, e.g. [pos, d_model]) or broadcasts to it")

    def validate(self):
        v = self.value
        if isinstance(v, bool) or v is None or not isinstance(v, (int, float, list, str)):
            return ("value", "a number, a nested list of numbers, or a .pt / .npy file")
        if isinstance(v, list):
            try:
                t = torch.tensor(v, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                return ("value", "a nested list of numbers with one length per level (a tensor)")
            if t.numel() > MAX_CONSTANT:
                return ("value", f"a tensor of at most {MAX_CONSTANT:,} numbers")
        if isinstance(v, str):
            if not v.endswith((".pt", ".npy")):
                return ("value", "a .pt (torch.save of a tensor) or .npy file")
            if not os.path.isfile(v):
                return ("value", "an existing .pt or .npy file (relative to the recipe)")
            try:
                t = load_tensor(v)
            except ValueError as e:
                return ("value", "a file holding one tensor of numbers", str(e))
            if t.numel() > MAX_CONSTANT:
                return ("value", f"a tensor of at most {MAX_CONSTANT:,} numbers")
        return None


def load_tensor(path: str) -> Tensor:
    """A tensor from a .pt (weights only: no code runs) or .npy file (no pickles); ValueError otherwise."""
    try:
        if path.endswith(".npy"):
            import numpy as np
            t = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ValueError(f"{type(e).__name__}: {' '.join(str(e).split())[:100]}") from None
    if not isinstance(t, Tensor) or not (t.is_floating_point() or not t.dtype.is_complex):
        raise ValueError(f"it holds {type(t).__name__}, not a tensor")
    return t.to(torch.float32)


@register_value
class Constant(ValueSource):
    name, Options = "constant", ConstantOptions
    detached = True
    doc = "a number everywhere, or a given tensor (a nested list or a .pt/.npy file): one sequence's value"

    def __init__(self, options):
        super().__init__(options)
        v = options.value
        self.tensor: Tensor | None = (None if isinstance(v, (int, float)) else
                                      load_tensor(v) if isinstance(v, str) else torch.tensor(v, dtype=torch.float32))

    def check(self, site, shape):
        if self.tensor is None:
            return None
        sizes = layout_sizes(site.info, shape)
        if sizes is None:
            return None                                  # a layout with sizes the shape does not know: checked when run
        target = tuple(1 if s is None else s for s in sizes)
        names = [n.strip() for n in site.info.shape.strip("[]").split(",")][1:]
        want = f"[{', '.join(names)}] = {list(sizes[1:])}, one sequence's value at the site"
        try:
            got = torch.broadcast_shapes(tuple(self.tensor.shape), target)
        except RuntimeError:
            return ("value", f"a tensor of shape {list(self.tensor.shape)}", f"one that broadcasts to {want}")
        if len(got) != len(target):
            return ("value", f"a tensor of shape {list(self.tensor.shape)}",
                    f"at most {len(target)} dimensions: {want}")
        return None

    def value(self, x, site, ctx):
        if self.tensor is None:
            return torch.full_like(x, self.options.value), None
        try:
            return torch.broadcast_to(self.tensor.to(x.device, x.dtype), x.shape), None
        except RuntimeError:
            raise InputError("", "value", f"a tensor of shape {list(self.tensor.shape)}",
                             f"one that broadcasts to {site.name}'s {list(x.shape)}") from None
