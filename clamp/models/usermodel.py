"""A user's own nn.Module as a model family: plug-ins, factories and their adapters.

Model layer, beside hf.py (the shipped families); seam.py registers the family "module". A
recipe names a factory and lists the plug-in that holds it:

    plugins: [my_model.py]                   # paths relative to the recipe (a .py file or a package
                                             # directory), or the dotted name of an installed module
    model:
      module: my_model:tiny                  # <plug-in module>[.<submodule>]:<factory>
      layers: 2
      heads: 4
      d_model: 64
      options: {mlp: false}                  # passed to the factory as keyword arguments

clamp imports only what `plugins:` lists (a `.py` file under its stem's name, a package
directory under its own), and only a module named there (or inside a package named there) can
provide a factory. The factory is called with the recipe's shape keys and the task's sizes as
keyword arguments, `layers, heads, d_model, d_head, d_mlp, vocab, n_ctx`, those its signature
takes (all of them if it takes **kwargs), plus `options`, and returns an nn.Module that maps
tokens [batch, pos] to logits [batch, pos, vocab] (or an object with `.logits`). It declares
where its parts are with the decorator in the plug-in:

    @clamp.model_factory(clamp.Adapter(blocks="blocks", attn="attn", pattern="source.torch_softmax_0",
                                       q="q", k="k", v="v", o="o", embed="embed"))
    def tiny(*, layers, heads, d_model, vocab, n_ctx, mlp=True): ...

Weights are the factory's own init under the run's seed. Recorded recipes keep plug-ins as
absolute paths, so pool workers, Ray workers on the same filesystem and a later `clamp report`
import the same files.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..names.errors import InputError, did_you_mean, show
from ..names.sites import ModelShape
from ..tasks import Batch
from .adapter import AdaptedSeam, Adapter
from .modsites import get
from .plugins import LOADED, is_path, load_plugin, plugin_name  # noqa: F401 - the plug-in names users import

ATTR = "__clamp_adapter__"
SHAPE_KEYS = ("layers", "heads", "d_model", "d_head", "d_mlp", "vocab", "n_ctx")


def model_factory(adapter: Adapter) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Declare the adapter of a factory that builds a user's model (the plug-in's side of the contract)."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"model_factory takes a clamp.Adapter, not {type(adapter).__name__}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        setattr(fn, ATTR, adapter)
        return fn
    return deco


def resolve(text: str, plugins: tuple[str, ...]) -> tuple[Callable[..., nn.Module], Adapter]:
    """'<module>:<factory>' → (factory, its adapter), importing the listed plug-ins first.
    InputError (unlocated; the caller places it at model.module) when anything is missing."""
    mod_name, sep, attr = text.partition(":")
    if not sep or not mod_name or not attr:
        raise InputError("", "", show(text), "<plug-in module>:<factory>, e.g. my_model:build")
    names = [plugin_name(p) for p in plugins]
    if not any(mod_name == n or mod_name.startswith(n + ".") for n in names):
        raise InputError("", "", show(text), "a factory in a module that plugins: lists"
                         + (f" ({', '.join(names)})" if names else " (it lists none)"),
                         f"add the file that defines {mod_name} to plugins:, e.g. plugins: [{mod_name}.py]")
    for p in plugins:
        load_plugin(p)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError("", "", show(text), "a module inside a listed plug-in", str(e)[:120]) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise InputError("", "", show(text), f"a factory function of {mod_name}", did_you_mean(attr, public))
    adapter = getattr(factory, ATTR, None)
    if adapter is None:
        raise InputError("", "", show(text), "a factory that declares its adapter",
                         f"decorate {attr} with @clamp.model_factory(clamp.Adapter(blocks=..., ...))")
    bad = adapter.problem()
    if bad:
        raise InputError("", "", f"{text}: adapter {bad[0]}", bad[1])
    return factory, adapter


# ---------------------------------------------------------------------------------------
# The family 'module'


def _parts(shape: ModelShape) -> tuple[str, dict, tuple[str, ...]]:
    """(factory text, options, plug-ins) from ModelShape.config (recipe.user_config writes it)."""
    c = dict(shape.config)
    return c["module"], json.loads(c["options"]), c["plugins"]


def _kwargs(factory: Callable, shape: ModelShape, options: dict) -> dict:
    sizes = {k: getattr(shape, k) for k in SHAPE_KEYS}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {**sizes, **options}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {**sizes, **options}
    return {**{k: v for k, v in sizes.items() if k in params}, **options}


def make(shape: ModelShape, device: str = "cpu") -> tuple[nn.Module, Adapter]:
    """The user's module for this shape (on `device`; 'meta' allocates nothing) and its adapter."""
    text, options, plugins = _parts(shape)
    factory, adapter = resolve(text, plugins)
    try:
        with torch.device(device):
            model = factory(**_kwargs(factory, shape, options))
    except InputError:
        raise
    except Exception as e:
        raise InputError("", "", f"{text}(...) raised {type(e).__name__}: {str(e)[:160]}",
                         "a factory that builds the model from these options") from None
    if not isinstance(model, nn.Module):
        raise InputError("", "", f"{text}(...) returned {type(model).__name__}", "an nn.Module")
    _check(model, adapter, shape, text)
    return model, adapter


def _check(model: nn.Module, a: Adapter, shape: ModelShape, text: str) -> None:
    """The adapter's paths exist and the module has the recipe's layers and heads."""
    def where(path: str) -> Any:
        try:
            return get(model, path)
        except (AttributeError, IndexError, TypeError):
            names = [n for n, _ in model.named_modules() if n]
            raise InputError("", "", f"{text}: adapter path {path!r}", "a module path of the model",
                             did_you_mean(path, names) or "print(model) shows them") from None
    blocks = where(a.blocks)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) != shape.layers:
        n = len(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else "no list of"
        raise InputError("", "", f"{text}: {n} blocks at {a.blocks!r}", f"model.layers = {shape.layers} blocks",
                         "pass layers to the model, or set model.layers to what the factory builds")
    for L in range(shape.layers):
        attn = f"{a.blocks}.{L}" + (f".{a.attn}" if a.attn else "")
        for part in (a.q, a.k, a.v, a.qkv, a.o):
            if part:
                w = where(f"{attn}.{part}").weight
                want = shape.heads * shape.d_head * shape.d_model * (3 if part == a.qkv else 1)
                if w.numel() != want:
                    raise InputError("", "", f"{text}: {attn}.{part}.weight of shape {list(w.shape)}",
                                     f"{shape.heads} heads × d_head {shape.d_head} × d_model {shape.d_model}",
                                     "set model.heads, d_model and d_head to the model's")
    for path in (a.embed, a.pos_embed, a.final_norm, a.unembed):
        if path:
            where(path)
    for L in range(shape.layers):
        for part in (a.mlp, *a.norms):
            if part:
                where(f"{a.blocks}.{L}.{part}")


@functools.lru_cache(maxsize=16)
def skeleton(shape: ModelShape) -> tuple[nn.Module, Adapter, dict[str, tuple[int, ...]]]:
    """The module on the meta device (structure and parameter shapes, no memory): what its sites are.
    One trace of it with every site, a full-length sequence, checks that they run in the adapter's
    order and gives each site's shape."""
    model, adapter = make(shape, "meta")
    T = max(2, shape.n_ctx)
    tokens = torch.zeros(1, T, dtype=torch.long, device="meta")
    seen = AdaptedSeam(model, adapter, shape, f"the model {_parts(shape)[0]}").check_order(Batch(tokens, tokens))
    return model, adapter, seen


def shape_of(base: ModelShape) -> ModelShape:
    """The recipe's shape with what the adapter says: MLPs, norms, learned positions."""
    text, _, plugins = _parts(base)
    _, a = resolve(text, plugins)
    return replace(base, attn_only=a.mlp is None, norm="pre" if a.norms else "none",
                   pos="learned" if a.pos_embed else "none")


def build(shape: ModelShape, seed: int) -> AdaptedSeam:
    with torch.random.fork_rng():                          # the init is the seed's, the global RNG untouched
        torch.manual_seed(seed)
        model, adapter = make(shape)
    return AdaptedSeam(model, adapter, shape, f"the model {_parts(shape)[0]}")   # sites checked by skeleton()
