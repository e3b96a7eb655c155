"""Raw module sites: any module's input or output, and any parameter, by its path in the model.

Model layer, under seam.py (which wraps every seam it builds in `ModuleSites`). For what the
TransformerLens names do not cover, a site can name the model's own modules:

    module:<path>.output      the module's output          e.g. module:transformer.h.0.mlp.output
    module:<path>.input       its first input              e.g. module:blocks.1.ln1.input
    module:<path>.<param>     one of its own parameters    e.g. module:transformer.h.0.mlp.c_fc.weight
    module:output             the whole model's output (module:input its input)

`<path>` is the dotted name `model.named_modules()` gives (a digit indexes a ModuleList), so
`print(model)` shows every path and `clamp sites RECIPE` lists them. Where a module returns
a tuple, its output here is the tuple's first item (a transformers output object: its first
field, e.g. `.logits`). Raw sites have no head axis (no `[h]` selections) and no layer; they are reached with
plain torch hooks (forward pre-hooks and forward hooks), on any model and either backend, and
take everything a TransformerLens site takes: clamps, ablations, probes, freezes of parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..names.sites import SiteInfo

PREFIX = "module:"
HookFn = Callable[[Tensor], Tensor]


def get(root: Any, path: str) -> Any:
    """root.a.b.0.c for path 'a.b.0.c' ('' is root itself); works on modules and nnsight envoys."""
    for part in path.split(".") if path else ():
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def raw_name(path: str, leaf: str) -> str:
    """The site name of `leaf` ('input', 'output' or a parameter name) of the module at `path`."""
    return f"{PREFIX}{path}.{leaf}" if path else f"{PREFIX}{leaf}"


def split(name: str) -> tuple[str, str]:
    """'module:a.b.output' → ('a.b', 'output')."""
    path, _, leaf = name[len(PREFIX):].rpartition(".")
    return path, leaf


def module_sites(module: nn.Module) -> list[SiteInfo]:
    """Every raw site of `module`: each submodule's input and output, and its own parameters."""
    out: list[SiteInfo] = []
    for path, m in module.named_modules():
        params = dict(m.named_parameters(recurse=False))
        for io in ("input", "output") if not isinstance(m, _CONTAINERS) else ():     # containers never run
            if io not in params:
                out.append(SiteInfo(raw_name(path, io), "activation", None, False, None,
                                    f"{type(m).__name__} {io}"))
        for pname, p in params.items():
            out.append(SiteInfo(raw_name(path, pname), "parameter", None, False, None,
                                "[" + ", ".join(map(str, p.shape)) + "]"))
    return out


_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def carried(value: Any) -> tuple[Tensor, Callable[[Tensor], Any]]:
    """(the tensor a module's input or output carries, how to put a new one in its place): a tensor
    itself, a tuple's first item, or a transformers output object's first field (e.g. `.logits`)."""
    if isinstance(value, Tensor):
        return value, (lambda new: new)
    if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
        return value[0], (lambda new: (new, *value[1:]))
    keys = list(value.keys()) if hasattr(value, "to_tuple") else []      # a transformers ModelOutput
    if keys and isinstance(value[keys[0]], Tensor):
        def put(new: Tensor) -> Any:
            value[keys[0]] = new
            return value
        return value[keys[0]], put
    raise TypeError(f"the module's value is a {type(value).__name__}, not a tensor")


def _apply(value: Any, fn: HookFn) -> Any:
    x, put = carried(value)
    return put(fn(x))


class ModuleSites:
    """A seam with raw `module:` sites added: torch hooks for those, the wrapped seam for the rest."""

    def __init__(self, inner: Any):
        self.inner = inner
        self._handles: list[Any] = []
        self._installed: Mapping[str, HookFn] | None = None
        self._raw = module_sites(inner.module)
        self._acts = {i.name for i in inner.catalogue() if i.kind == "activation"}

    def __getattr__(self, name: str) -> Any:           # shape, module, forward, attention_scores, nn, ...
        return getattr(self.inner, name)

    def catalogue(self) -> list[SiteInfo]:
        return self.inner.catalogue() + self._raw

    def install(self, fns: Mapping[str, HookFn]) -> None:
        """Install `fns` (a new mapping each time the functions change: the Intervener attaches its
        same mapping before every forward, and that is a no-op here)."""
        if fns is self._installed:
            return
        self._installed = fns
        for h in self._handles:
            h.remove()
        self._handles = []
        own = {name: fn for name, fn in fns.items() if not name.startswith(PREFIX)}
        for name, fn in ((n, f) for n, f in fns.items() if n.startswith(PREFIX)):
            path, io = split(name)
            m = self.inner.module.get_submodule(path)
            site = getattr(m, "name", None)                # a hook point (the built-in model): make it run,
            if isinstance(site, str) and site in self._acts and site not in own:   # as a model may skip one
                own[site] = _identity                                              # with nothing installed
            if io == "output":
                self._handles.append(m.register_forward_hook(lambda _m, _a, out, fn=fn: _apply(out, fn)))
            else:
                self._handles.append(m.register_forward_pre_hook(
                    lambda _m, args, kw, fn=fn: _first_input(args, kw, fn), with_kwargs=True))
        self.inner.install(own)

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        if site.startswith(PREFIX):
            return self.inner.module.get_parameter(site[len(PREFIX):]), (slice(None),)
        return self.inner.parameter_slice(site, heads)

    def weight(self, name: str) -> Tensor:
        if name.startswith(PREFIX):
            return self.inner.module.get_parameter(name[len(PREFIX):])
        return self.inner.weight(name)

    def forward(self, batch: Any) -> Tensor:
        return self.inner.forward(batch)


def _identity(x: Tensor) -> Tensor:
    return x


def _first_input(args: tuple, kw: dict, fn: HookFn) -> tuple[tuple, dict]:
    if args:
        return (_apply(args[0], fn), *args[1:]), kw
    for k, v in kw.items():                             # called with keywords only: the first tensor one
        if isinstance(v, Tensor):
            return args, {**kw, k: fn(v)}
    raise TypeError("the module was called without a tensor input")
