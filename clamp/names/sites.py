"""The site grammar: one vocabulary for every place clamp can touch.

Leftmost module of the flow; pure Python, no torch. Every other stage (recipe, plan,
metric columns, graph, report) uses the names defined here.

A name is a dotted TransformerLens path with an optional head selection:

    blocks.1.attn.hook_pattern[3]        one head
    blocks.1.attn.hook_z[0,1,2,4:8]      a list and a half-open range
    blocks.*.attn.W_Q[*]                 every layer, every head
    blocks.0.mlp.*                       every parameter of one MLP

    module:transformer.h.0.mlp.output    a raw module path (modsites.py: .input, .output, a parameter)

`*` matches within one path segment (`blocks.*.attn.W_*`), never across a dot. Layers and heads are 0-based.
`parse` and `format_site` are inverse on canonical text (no spaces); `expand` resolves a
name against a `ModelShape` into concrete `Site`s (one per matching name, heads as a
sorted tuple); `catalogue` lists everything a model has.
"""
from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import InputError, did_you_mean, show

HeadItem = int | tuple[int, int] | str          # 3 | (4, 8) | '*'

_SEGMENT = r"[A-Za-z0-9_*]+"
_PATH_RE = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*\Z")
_ITEM_RE = re.compile(r"^(?:(\d+)|(\d+):(\d+)|(\*))\Z")


@dataclass(frozen=True)
class SiteRef:
    """A parsed name: a dotted path (may hold `*`) and an optional head selection."""

    path: str
    heads: tuple[HeadItem, ...] | None = None

    def __str__(self) -> str:
        return format_site(self)


def parse(text: str) -> SiteRef:
    """Parse a site name; raises InputError (unlocated) on malformed text."""
    if not isinstance(text, str):
        raise InputError("", "", show(text), "a site name such as 'blocks.1.attn.hook_pattern[3]'")
    s = text.strip()
    heads: tuple[HeadItem, ...] | None = None
    if s.endswith("]"):
        if "[" not in s:
            raise InputError("", "", show(text), "a head selection opened with '['")
        path, _, inner = s[:-1].partition("[")
        if not inner.strip():
            raise InputError("", "", show(text), "heads inside the brackets, e.g. [3], [0,2], [4:8] or [*]")
        items: list[HeadItem] = []
        for raw in inner.split(","):
            m = _ITEM_RE.match(raw.strip())
            if not m:
                raise InputError("", "", show(text),
                                 "heads as integers, half-open ranges a:b, or *, e.g. [0,1,4:8]")
            if m.group(1) is not None:
                items.append(int(m.group(1)))
            elif m.group(4):
                items.append("*")
            else:
                a, b = int(m.group(2)), int(m.group(3))
                if a >= b:
                    raise InputError("", "", show(text), f"a range a:b with a < b (got {a}:{b})",
                                     f"write {a}:{a + 1} for head {a} alone" if a == b else "")
                items.append((a, b))
        heads = tuple(items)
    else:
        path = s
    bare = path[len("module:"):] if path.startswith("module:") else path
    if "[" in path or not _PATH_RE.match(bare):
        raise InputError("", "", show(text), "a dotted name such as 'blocks.1.attn.hook_z' "
                         "with an optional head selection such as [0,1,4:8], or module:<module path>.output")
    return SiteRef(path, heads)


def block_layer(path: str) -> int | None:
    """The layer a site or parameter path is in (`blocks.L....`), None outside the blocks."""
    parts = path.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def one_head(text: str) -> tuple[str, int, int] | None:
    """(path, layer, head) of a name of one head in a block, e.g. 'blocks.1.attn.hook_pattern[3]'; None
    for any other name (several heads, no head, outside the blocks, malformed)."""
    try:
        ref = parse(text)
    except InputError:
        return None
    layer = block_layer(ref.path)
    if layer is None or ref.heads is None or len(ref.heads) != 1 or not isinstance(ref.heads[0], int):
        return None
    return ref.path, layer, ref.heads[0]


def format_site(ref: SiteRef) -> str:
    if ref.heads is None:
        return ref.path
    parts = []
    for it in ref.heads:
        parts.append(f"{it[0]}:{it[1]}" if isinstance(it, tuple) else str(it))
    return f"{ref.path}[{','.join(parts)}]"


def head_name(path: str, heads: tuple[int, ...] | None) -> str:
    """Canonical name of concrete heads: runs of 3+ consecutive heads become ranges."""
    if heads is None:
        return path
    items: list[HeadItem] = []
    i = 0
    hs = list(heads)
    while i < len(hs):
        j = i
        while j + 1 < len(hs) and hs[j + 1] == hs[j] + 1:
            j += 1
        if j - i >= 2:
            items.append((hs[i], hs[j] + 1))
        else:
            items.extend(hs[i:j + 1])
        i = j + 1
    return format_site(SiteRef(path, tuple(items)))


# ---------------------------------------------------------------------------------------
# What a model has


@dataclass(frozen=True)
class ModelShape:
    """The facts about a model that decide which sites exist (no weights)."""

    layers: int
    heads: int
    d_model: int
    d_head: int
    attn_only: bool = True
    d_mlp: int = 0
    norm: str = "pre"            # 'pre' | 'none'
    pos: str = "rope"            # 'rope' | 'learned' | 'none'
    vocab: int = 0               # token embedding rows
    n_out: int = 0               # unembedding columns
    n_ctx: int = 0
    vector_dim: int = 0          # >0: some positions carry vectors (the few-shot exemplars)
    embed_std: float = 0.02      # init std of W_E (not a site fact; carried for the model builder)
    family: str = "builtin"      # which model family (seam.py builds it; its catalogue names its sites)
    backend: str = "native"      # how clamp reaches the sites: 'native' hook points or 'nnsight'
    config: tuple = ()           # a foreign family's own config keys, as sorted (key, value) pairs


@dataclass(frozen=True)
class SiteInfo:
    """One concrete name a model has (layer filled in), and how it is laid out."""

    name: str                    # e.g. 'blocks.0.attn.hook_pattern'
    kind: str                    # 'activation' | 'parameter'
    layer: int | None
    per_head: bool
    head_axis: int | None        # axis of the head index in the tensor, if per_head
    shape: str                   # layout, e.g. '[batch, head, query, key]'
    order: int = 0               # forward order of activations (parameters: 0)


@dataclass(frozen=True)
class Site:
    """A resolved target: one concrete name and the heads selected (None = all of it)."""

    name: str
    heads: tuple[int, ...] | None
    info: SiteInfo = field(compare=False, repr=False)

    def __str__(self) -> str:
        return head_name(self.name, self.heads)


CATALOGUES: dict[str, Callable[[ModelShape], list[SiteInfo]]] = {}
SHAPES: dict[str, Callable[[ModelShape], ModelShape]] = {}


def register_family(family: str, sites: Callable[[ModelShape], list[SiteInfo]],
                    derive: Callable[[ModelShape], ModelShape] | None = None) -> None:
    """Name a model family's sites (`sites(shape) -> [SiteInfo]`) and how it completes a shape from a
    recipe's keys (`derive`). seam.py registers every family it can build, in one table."""
    CATALOGUES[family] = sites
    if derive is not None:
        SHAPES[family] = derive


def family_shape(base: ModelShape) -> ModelShape:
    """`base` (the recipe's keys) with the family's own facts filled in."""
    derive = SHAPES.get(base.family)
    return derive(base) if derive else base


def catalogue(shape: ModelShape) -> list[SiteInfo]:
    """Every activation site and parameter of a model of this shape, in forward order."""
    if shape.family not in CATALOGUES:
        raise InputError("", "model.family", show(shape.family), "a model family: " + ", ".join(sorted(CATALOGUES)),
                         did_you_mean(shape.family, CATALOGUES))
    return CATALOGUES[shape.family](shape)


def builtin_catalogue(shape: ModelShape) -> list[SiteInfo]:  # long: a table of the model's sites, in order
    """The built-in transformer's sites (model.py builds exactly these)."""
    out: list[SiteInfo] = []
    order = itertools.count(1)

    def act(name: str, layout: str, layer: int | None = None, head_axis: int | None = None):
        out.append(SiteInfo(name, "activation", layer, head_axis is not None, head_axis,
                            layout, next(order)))

    def par(name: str, layout: str, layer: int | None = None, per_head: bool = False):
        out.append(SiteInfo(name, "parameter", layer, per_head, 0 if per_head else None, layout))

    par("embed.W_E", "[vocab, d_model]")
    if shape.vector_dim:
        par("embed.W_x", "[vector_dim, d_model]")
    if shape.pos == "learned":
        par("pos_embed.W_pos", "[n_ctx, d_model]")
    act("hook_embed", "[batch, pos, d_model]")
    if shape.pos == "learned":
        act("hook_pos_embed", "[batch, pos, d_model]")
    for L in range(shape.layers):
        b = f"blocks.{L}"
        act(f"{b}.hook_resid_pre", "[batch, pos, d_model]", L)
        if shape.norm == "pre":
            par(f"{b}.ln1.w", "[d_model]", L)
            par(f"{b}.ln1.b", "[d_model]", L)
            act(f"{b}.ln1.hook_normalized", "[batch, pos, d_model]", L)
        for w in ("W_Q", "W_K", "W_V"):
            par(f"{b}.attn.{w}", "[head, d_model, d_head]", L, per_head=True)
        par(f"{b}.attn.W_O", "[head, d_head, d_model]", L, per_head=True)
        for h in ("hook_q", "hook_k", "hook_v"):
            act(f"{b}.attn.{h}", "[batch, pos, head, d_head]", L, head_axis=2)
        if shape.pos == "rope":
            act(f"{b}.attn.hook_rot_q", "[batch, pos, head, d_head]", L, head_axis=2)
            act(f"{b}.attn.hook_rot_k", "[batch, pos, head, d_head]", L, head_axis=2)
        act(f"{b}.attn.hook_attn_scores", "[batch, head, query, key]", L, head_axis=1)
        act(f"{b}.attn.hook_pattern", "[batch, head, query, key]", L, head_axis=1)
        act(f"{b}.attn.hook_z", "[batch, pos, head, d_head]", L, head_axis=2)
        act(f"{b}.hook_attn_out", "[batch, pos, d_model]", L)
        if not shape.attn_only:
            act(f"{b}.hook_resid_mid", "[batch, pos, d_model]", L)
            if shape.norm == "pre":
                par(f"{b}.ln2.w", "[d_model]", L)
                par(f"{b}.ln2.b", "[d_model]", L)
                act(f"{b}.ln2.hook_normalized", "[batch, pos, d_model]", L)
            par(f"{b}.mlp.W_in", "[d_model, d_mlp]", L)
            par(f"{b}.mlp.b_in", "[d_mlp]", L)
            par(f"{b}.mlp.W_out", "[d_mlp, d_model]", L)
            par(f"{b}.mlp.b_out", "[d_model]", L)
            act(f"{b}.mlp.hook_pre", "[batch, pos, d_mlp]", L)
            act(f"{b}.mlp.hook_post", "[batch, pos, d_mlp]", L)
            act(f"{b}.hook_mlp_out", "[batch, pos, d_model]", L)
        act(f"{b}.hook_resid_post", "[batch, pos, d_model]", L)
    if shape.norm == "pre":
        par("ln_final.w", "[d_model]")
        par("ln_final.b", "[d_model]")
        act("ln_final.hook_normalized", "[batch, pos, d_model]")
    par("unembed.W_U", "[d_model, n_out]")
    par("unembed.b_U", "[n_out]")
    act("hook_logits", "[batch, pos, n_out]")
    return out


def layout_sizes(info: SiteInfo, shape: ModelShape) -> tuple[int | None, ...] | None:
    """The sizes of a site's layout for this shape (None for the batch); None when the layout names a
    dimension the shape does not know (a raw module site, a user model's own output)."""
    dims = {"pos": shape.n_ctx, "query": shape.n_ctx, "key": shape.n_ctx, "head": shape.heads,
            "d_model": shape.d_model, "d_head": shape.d_head, "d_mlp": shape.d_mlp, "n_out": shape.n_out,
            "vocab": shape.vocab, "n_ctx": shape.n_ctx, "vector_dim": shape.vector_dim}
    names = [d.strip() for d in info.shape.strip("[]").split(",")]
    if not names or any(n != "batch" and not n.isdigit() and not dims.get(n) for n in names):
        return None
    return tuple(None if n == "batch" else int(n) if n.isdigit() else dims[n] for n in names)


def _template(name: str) -> str:
    return re.sub(r"^blocks\.\d+\.", "blocks.{L}.", name)


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("module:") != name.startswith("module:"):       # raw sites only by raw names
        return False
    ps, ns = pattern.split("."), name.split(".")
    return len(ps) == len(ns) and all(fnmatch.fnmatchcase(n, p) for p, n in zip(ps, ns))


def expand(text: str | SiteRef, shape: ModelShape, kind: str | None = None) -> list[Site]:
    """Resolve a name into concrete Sites of a model; InputError (unlocated) when it names nothing.

    `kind` restricts to 'activation' or 'parameter'.
    """
    ref = parse(text) if isinstance(text, str) else text
    infos = [i for i in catalogue(shape) if kind is None or i.kind == kind]
    hits = [i for i in infos if _matches(ref.path, i.name)]
    what = {"activation": "an activation site", "parameter": "a parameter", None: "a site or parameter"}[kind]
    if not hits:
        raise _unknown(ref, infos, shape, what)
    out: list[Site] = []
    for info in hits:
        if ref.heads is None:
            out.append(Site(info.name, None, info))
            continue
        if not info.per_head:
            raise InputError("", "", show(format_site(ref)),
                             f"no head selection: {info.name} is not split by head",
                             f"write {info.name} without brackets")
        out.append(Site(info.name, _heads(ref, shape.heads), info))
    return out


def _heads(ref: SiteRef, n: int) -> tuple[int, ...]:
    chosen: list[int] = []
    for it in ref.heads or ():
        if it == "*":
            hs = list(range(n))
        elif isinstance(it, tuple):
            if it[1] > n:
                raise InputError("", "", show(format_site(ref)),
                                 f"heads below {n} (the model has {n} heads per layer: 0..{n - 1})",
                                 f"write {it[0]}:{n}" if it[0] < n else "")
            hs = list(range(*it))
        else:
            assert isinstance(it, int)
            if it >= n:
                raise InputError("", "", show(format_site(ref)),
                                 f"heads 0..{n - 1} (the model has {n} heads per layer)")
            hs = [it]
        for h in hs:
            if h in chosen:
                raise InputError("", "", show(format_site(ref)), f"each head once (head {h} is selected twice)")
            chosen.append(h)
    return tuple(sorted(chosen))


def _unknown(ref: SiteRef, infos: list[SiteInfo], shape: ModelShape, what: str) -> InputError:
    m = re.match(r"^blocks\.(\d+)\.", ref.path)
    if m and int(m.group(1)) >= shape.layers:
        return InputError("", "", show(format_site(ref)),
                          f"a layer 0..{shape.layers - 1} (the model has {shape.layers} layers)",
                          "layers are 0-based")
    names = [i.name for i in infos]
    parts = ref.path.split(".")
    if shape.attn_only and ("mlp" in parts or "ln2" in parts or parts[-1] in ("hook_mlp_out", "hook_resid_mid")):
        hint = "the model is attention-only (model.attn_only: true) and has no MLP sites"
    else:
        templates = sorted({_template(n) for n in names})
        probe = ref.path.replace("*", "0")
        hint = did_you_mean(probe, names) or did_you_mean(_template(ref.path), templates)
    return InputError("", "", show(format_site(ref)), what + " of this model (`clamp sites RECIPE` lists them)",
                      hint)

