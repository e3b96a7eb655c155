"""The value-source interface: what a clamp or an ablation sets a site to.

Model layer (values/; the built-in sources are the other modules of this folder, each registered
when values/ is imported). spec checks a recipe's `to:`/`how:` and options against this registry;
compile and hooks call `value`. A value source is data: a name and a frozen options dataclass,
printable in a plan and savable in a recipe.

`value(x, site, ctx)` gets the activation `x` at the site (full tensor, all heads) and a
`Context` (the batch, the model, the run's task, activations recorded earlier in the same
forward pass), and returns `(v, rows)`: a tensor of x's shape and an optional boolean mask (broadcastable
to x) of the elements to replace; the hook combines that with the head selection and
writes `where(mask, v, x)`, so no gradient reaches what produced the replaced elements.

Register new sources with `@register_value`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..names.errors import InputError, did_you_mean, show
from ..names.registry import decorator
from ..names.sites import Site
from ..tasks import Batch


@dataclass
class Context:
    """What a value source may look at during one forward pass."""

    batch: Batch
    seam: Any                                    # the model, behind the seam (seam.ModelSeam)
    cache: dict[str, Tensor]                     # activations recorded earlier in this forward
    step: int = 0
    seed: int = 0
    task: Any = None                             # the run's Task (tasks/): its options and what it computed
    reference: dict[str, Tensor] | None = None   # activations of the reference pass (preserve)
    # another run's model at a checkpoint step, as an object with `.activation(batch, site)`
    # (the run layer supplies it: donor.py); None where no run directory can be read
    donor: Callable[[str, int], Any] | None = None


class ValueSource:
    """Base class. `sites`: leaf names it applies to ('*' = any activation)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    sites: ClassVar[tuple[str, ...]] = ("*",)
    ablation: ClassVar[bool] = False             # usable as `ablate: … how: <name>`
    detached: ClassVar[bool] = False             # its value carries no gradient from the model
    doc: ClassVar[str] = ""

    def __init__(self, options):
        self.options = options

    def applies_to(self, site: Site) -> bool:
        leaf = site.name.rsplit(".", 1)[-1]
        return site.info.kind == "activation" and ("*" in self.sites or leaf in self.sites)

    def needs(self, site: Site, shape) -> tuple[str, ...]:
        """Other activation sites (concrete names) this source reads in the same forward pass."""
        return ()

    def check(self, site: Site, shape) -> tuple[str, str, str] | None:
        """(option key, found, expected) if the options do not fit this site of this model."""
        return None

    def value(self, x: Tensor, site: Site, ctx: Context) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        from ..names.schema import unbuild
        opts = unbuild(self.options)
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")


VALUES: dict[str, type[ValueSource]] = {}


register_value = decorator(VALUES, "value source")
"""`@register_value` (or `@register_value(replace=True)`): a taken name is refused unless replaced on purpose."""


def get_value(name: str, *, ablation: bool = False) -> type[ValueSource]:
    pool = {k: v for k, v in VALUES.items() if v.ablation or not ablation}
    if not isinstance(name, str) or name not in pool:
        what = "an ablation" if ablation else "a value source"
        raise InputError("", "", show(name), f"{what}: one of " + ", ".join(sorted(pool)),
                         did_you_mean(str(name), pool))
    return pool[name]


@dataclass(frozen=True)
class NoOptions:
    pass


def row_mask(batch: Batch, rows: str, T: int) -> Tensor | None:
    """[batch, 1, query, 1] mask of the query rows with the given role; None for 'all'."""
    if rows == "all":
        return None
    if rows not in batch.roles:
        raise InputError("", "rows", show(rows), "'all' or a position role of this task: "
                         + ", ".join(sorted(batch.roles)), did_you_mean(rows, batch.roles))
    return batch.roles[rows][:, None, :T, None]
