"""K models of any adapted family as one module: the member axis folded into the batch.

Model layer, beside stacked.py (which does the same for the built-in transformer by recomputing
it with a member axis) and under ensemble.py (run layer), which trains a suite's compatible runs
together. Here the family's own forward code runs unchanged, once, on the members' batches
concatenated along the batch axis ([K * batch, pos]); every module that holds parameters of its
own (a Linear, GPT-2's Conv1D, an Embedding, a LayerNorm or RMSNorm: the leaves) is replaced by a
`FoldedLeaf` that cuts its input into the K members' rows and applies member k's parameters to
member k's rows, the same call with the same kernel as member k's module alone
(torch.func.functional_call). Everything between the leaves (attention, softmax, activations,
residual sums, rotary embeddings) is per sequence already, so it runs once for all members.

Sites come from the family's adapter, as for one model (adapter.py): a site's value has the batch
first, so at a site where some member has a function, that member's rows go through it and the
others pass unchanged. Member k alone (`FoldedMember`: what its Intervener, probes and
checkpoints see) is the template module called with member k's parameters.

A family folds when every module with parameters of its own has no submodule with parameters
(`fold_problem` says which module does not), its leaves take the batch first and return one
tensor, and its members' parameter shapes and buffers are equal (a factory whose structure
depends on the seed is refused when the stack is built).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..names.sites import SiteInfo
from ..tasks import Batch
from .adapter import AdaptedSeam
from .modsites import get
from .stacked import MemberError, StackMember, call_member

HookFn = Callable[[Tensor], Tensor]


def leaves(module: nn.Module) -> list[str]:
    """Paths of the modules that hold parameters of their own (in named_modules order)."""
    return [n for n, m in module.named_modules(remove_duplicate=False)
            if any(True for _ in m.parameters(recurse=False))]


def fold_problem(module: nn.Module) -> str:
    """Why this module cannot be folded ('' when it can): a module holding parameters of its own
    whose submodules hold parameters too (its forward would mix the members' rows)."""
    for name, m in module.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            if not name:
                return "the root module holds parameters of its own: its forward cannot be split by member"
            inner = [c for c, sub in m.named_modules() if c and any(True for _ in sub.parameters(recurse=False))]
            if inner:
                own = ", ".join(n for n, _ in m.named_parameters(recurse=False))
                return (f"module {name or '(the root)'!r} holds parameters of its own ({own}) and submodules "
                        f"with parameters ({inner[0]}): its rows cannot be split by member")
    return ""


# How a leaf's first input relates to the batch: "rows" [K * batch, ...] (each member's rows in
# turn), "one" [1, ...] (one row broadcast over the batch: position ids), "shared" [...] (no batch
# axis: positions as arange(pos)). A leaf's kind is learned once, by a forward on the meta device
# (`kinds`), where the batch is sized to differ from the model's other sizes; a forward then cuts
# each leaf's input by its kind, so a batch that happens to equal the sequence length is no riddle.
ROWS, ONE, SHARED = "rows", "one", "shared"


class FoldedLeaf(nn.Module):
    """A leaf of the folded module: member k's rows (or the one shared input) through member k's parameters."""

    def __init__(self, stack: FoldedStack, path: str, leaf: nn.Module, names: dict[str, str]):
        super().__init__()
        self._stack = [stack]                      # not a submodule
        self._leaf = [leaf]                        # the template leaf, called with each member's parameters
        self.path = path
        self.names = names                         # its own parameter name → the stack's name
        self.batched = _batched_kind(leaf)         # a leaf computed for all members in one operation

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        st = self._stack[0]
        views, B = st.views, st.rows
        K = len(views[next(iter(self.names.values()))])
        kind = st.kind(self.path, x, K * B)
        if kind == ROWS and self.batched and not args and not kwargs:
            return self._batched(st, x, K)
        xs = x.split(B) if kind == ROWS else (x,) * K                  # member k's input
        out = [functional_call(self._leaf[0], {own: views[name][k] for own, name in self.names.items()},
                               (xk, *args), kwargs) for k, xk in enumerate(xs)]
        if kind == ONE:                             # [1, ...] → each member's over its own rows
            out = [o.expand(B, *o.shape[1:]) for o in out]
        elif kind == SHARED:                        # [...] → [batch, ...] for each member
            out = [o.expand(B, *o.shape) for o in out]
        return torch.cat(out)                       # [K * batch, ...]

    def _batched(self, st: FoldedStack, x: Tensor, K: int) -> Tensor:
        """Linear, Conv1D (weight [in, out]) and Embedding for all members at once: one batched
        product whose product per member is the one its module computes alone (addmm with the bias
        as the accumulator), or one lookup in the members' tables laid end to end."""
        W = st.p(self.names["weight"])
        if self.batched == "embedding":                                   # W [K, vocab, d]
            V = W.shape[1]
            offset = torch.arange(K, device=x.device).mul_(V).view(K, *([1] * x.dim()))
            idx = x.view(K, -1, *x.shape[1:]) + offset                    # [K, batch, ...]
            return F.embedding(idx.flatten(0, 1), W.flatten(0, 1))        # [K * batch, ..., d]
        xv = x.reshape(K, -1, x.shape[-1])                                # [K, rows, in]
        Wt = W.transpose(1, 2) if self.batched == "linear" else W         # [K, in, out]
        bias = self.names.get("bias")
        y = torch.bmm(xv, Wt) if bias is None else torch.baddbmm(st.p(bias).unsqueeze(1), xv, Wt)
        return y.view(*x.shape[:-1], Wt.shape[-1])                        # [K * batch, ..., out]


def _batched_kind(leaf: nn.Module) -> str | None:
    if type(leaf) is nn.Linear:
        return "linear"
    if (type(leaf).__name__ == "Conv1D" and type(leaf).__module__.startswith("transformers.")
            and getattr(leaf, "weight", None) is not None and leaf.weight.dim() == 2):
        return "conv1d"                            # transformers' GPT-2 projection: x @ weight + bias
    if type(leaf) is nn.Embedding and leaf.padding_idx is None and leaf.max_norm is None and not leaf.sparse:
        return "embedding"
    return None


class FoldedStack(nn.Module):
    """The members' parameters stacked ([K, ...] each, named as the template module names them) and a
    folded copy of the template whose forward runs every member at once."""

    def __init__(self, seams: list[AdaptedSeam], kinds: Mapping[str, str] | None = None):
        """`kinds`: each leaf's input kind (`fold_kinds`); None learns them from the shapes it meets."""
        super().__init__()
        t = seams[0]
        self.shape, self.K = t.shape, len(seams)
        self.template: AdaptedSeam = t             # member 0's module and adapter: member forwards, weights
        module = t.module
        self.names = [n for n, _ in module.named_parameters()]
        self.index = {n: i for i, n in enumerate(self.names)}
        self._name_of = {id(p): n for n, p in module.named_parameters()}   # tied parameters: one name
        per = [dict(s.module.named_parameters()) for s in seams]
        for s in seams[1:]:
            _check_same(module, s.module)
        self.params = nn.ParameterList(
            nn.Parameter(torch.stack([p[n].detach() for p in per])) for n in self.names)   # [K, ...] each
        self.fns: list[dict[str, HookFn]] = [{} for _ in seams]
        self._subset: list[Tensor] | None = None
        self.views: dict[str, tuple[Tensor, ...]] = {}          # during a forward: each member's parameters
        self.rows = 0                                            # and each member's rows (its batch)
        self.kinds = None if kinds is None else dict(kinds)
        self.seen: dict[str, set[str]] = {}                      # kinds met, while learning them
        folded = copy.deepcopy(module)
        for path in leaves(module):
            leaf = get(module, path)
            names = {own: self._name_of[id(p)] for own, p in leaf.named_parameters(recurse=False)}
            _replace(folded, path, FoldedLeaf(self, path, copy.deepcopy(leaf), names))
        for p in folded.parameters():              # none left: every parameter lived in a leaf
            raise AssertionError(f"a parameter outside the leaves: {p.shape}")
        self._folded = [AdaptedSeam(folded, t.adapter, t.shape, t.what)]   # not a submodule

    def kind(self, path: str, x: Tensor, rows: int) -> str:
        """How leaf `path`'s input x relates to the batch of `rows` rows (all members')."""
        if self.kinds is not None:
            if path not in self.kinds:
                raise ValueError(f"module {path!r} ran in a forward where the meta forward did not run it")
            return self.kinds[path]
        kind = ROWS if x.shape[0] == rows else ONE if x.shape[0] == 1 else SHARED
        self.seen.setdefault(path, set()).add(kind)
        return kind

    def p(self, name: str) -> Tensor:
        active = self._subset
        return self.params[self.index[name]] if active is None else active[self.index[name]]

    def member(self, k: int) -> FoldedMember:
        return FoldedMember(self, k)

    def member_params(self, k: int, detach: bool = False) -> dict[str, Tensor]:
        return {n: (p[k].detach() if detach else p[k]) for n, p in zip(self.names, self.params)}

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's state_dict as its module alone has it (copies; tied parameters under each name)."""
        sd = _under(self.template.module, self.member_params(k, detach=True), lambda: self.template.module.state_dict())
        return {n: v.detach().clone() for n, v in sd.items()}

    @torch.no_grad()
    def load_member_state(self, k: int, state: Mapping[str, Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"state of member {k} does not match the model: {missing[:5]}")
        for n, p in zip(self.names, self.params):
            p[k] = state[n]

    def forward_batches(self, batches: list[Batch], members: list[int] | None = None) -> Tensor:
        """Logits [K, batch, pos, n_out] of member k on batches[k] (equal shapes); with `members`, only
        those members (copies of their parameters: for evaluation), batches[i] for members[i]."""
        B = len(batches[0])
        fns = self.fns if members is None else [self.fns[k] for k in members]
        if members is not None:
            idx = torch.tensor(members, device=self.params[0].device)
            self._subset = [p.index_select(0, idx) for p in self.params]
        seam = self._folded[0]
        try:
            self.views = {n: self.p(n).unbind(0) for n in self.names}         # one backward for all members
            self.rows = B
            seam.install({site: _dispatch(site, fns, B) for site in dict.fromkeys(s for f in fns for s in f)})
            tokens = torch.cat([b.tokens for b in batches])                        # [K * batch, pos]
            logits = seam.forward(Batch(tokens, torch.cat([b.targets for b in batches])))
        except MemberError as e:
            if members is None:
                raise
            raise MemberError(members[e.k], e.error) from e.error
        finally:
            seam.install({})
            self.views, self._subset = {}, None
        return logits.unflatten(0, (len(fns), B))                              # [K, batch, pos, n_out]


def fold_kinds(meta: AdaptedSeam, n_ctx: int) -> dict[str, str]:
    """Each leaf's input kind, from one forward of two folded copies of `meta` (a module on the meta
    device: no memory) on a batch sized unlike the model's other sizes; ValueError when a module
    holds parameters beside submodules with parameters, or a leaf meets inputs of two kinds."""
    problem = fold_problem(meta.module)
    if problem:
        raise ValueError(problem)
    T = max(2, n_ctx)
    B = T + 1                                    # 2 members x (T + 1) rows: not T, not 1
    tokens = torch.zeros(B, T, dtype=torch.long, device="meta")
    st = FoldedStack([meta, meta])
    out = st.forward_batches([Batch(tokens, tokens)] * 2)
    if tuple(out.shape[:3]) != (2, B, T):
        raise ValueError(f"a folded forward gave logits of shape {list(out.shape)}, not [2, {B}, {T}, ...]")
    mixed = [p for p, k in st.seen.items() if len(k) > 1]
    if mixed:
        raise ValueError(f"module {mixed[0]!r} is called with inputs of the batch and inputs without it")
    return {p: next(iter(k)) for p, k in st.seen.items()}


def _dispatch(site: str, fns: list[dict[str, HookFn]], B: int) -> HookFn:
    """The function installed at `site` on the folded module: each member's own on its rows."""
    have = [f.get(site) for f in fns]

    def fn(x: Tensor) -> Tensor:                  # x [K * batch, ...]
        xs = x.split(B)
        return torch.cat([xk if f is None else call_member(k, f, xk) for k, (f, xk) in enumerate(zip(have, xs))])
    return fn


class _Under(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, fn: Callable):
        return fn()


def _under(module: nn.Module, params: Mapping[str, Tensor], fn: Callable):
    """fn() while `module`'s parameters are `params` (torch.func.functional_call; tied ones follow)."""
    return functional_call(_Under(module), {f"m.{n}": t for n, t in params.items()}, (fn,))


class FoldedMember(StackMember):
    """Member k of a FoldedStack behind the model seam (seam.ModelSeam): a forward here is member k alone."""

    stack: FoldedStack

    def catalogue(self) -> list[SiteInfo]:
        return self.stack.template.catalogue()

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        p, index = self.stack.template.parameter_slice(site, heads)
        stacked = self.stack.params[self.stack.index[self.stack._name_of[id(p)]]]
        return stacked, (self.k, *index)

    def weight(self, name: str) -> Tensor:
        t = self.stack.template
        return _under(t.module, self.stack.member_params(self.k), lambda: t.weight(name))

    def forward(self, batch: Batch) -> Tensor:
        t = self.stack.template
        t.install(self.stack.fns[self.k])
        try:
            return _under(t.module, self.stack.member_params(self.k), lambda: t.forward(batch))
        finally:
            t.install({})

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        return self.stack.template.attention_scores(layer, xq, xk)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get(root, parent) if parent else root, leaf, new)


def _check_same(a: nn.Module, b: nn.Module) -> None:
    """Members of one stack have one structure: equal parameter names and shapes, equal buffers."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys() or any(pa[n].shape != pb[n].shape for n in pa):
        bad = next((n for n in pa if n not in pb or pa[n].shape != pb[n].shape), next(iter(pb.keys() - pa.keys()), ""))
        raise ValueError(f"the members' modules differ at parameter {bad!r}: an ensemble's members have one structure")
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    if ba.keys() != bb.keys() or any(not ba[n].is_meta and not torch.equal(ba[n], bb[n]) for n in ba):
        raise ValueError("the members' modules have different buffers: an ensemble shares them")
