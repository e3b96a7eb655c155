"""K built-in transformers of one shape as one module: every parameter with a leading member axis.

Model layer, beside model.py (whose computation `Stack.forward` repeats with a member axis) and
under ensemble.py (run layer), which trains a suite's compatible runs together. Member k of a
`Stack` is itself a model behind the seam (`MemberSeam`): its parameters are the views
`stack.p(name)[k]`, its site functions are its own, and a forward of it alone is model.py's
forward on those views (torch.func.functional_call). `Stack.forward` runs every member at once:
each matrix product is one batched product over members (bit for bit the products each member
would compute alone: the same gemm per member); LayerNorms run per member (torch's fused affine
LayerNorm takes one weight), and at a site where some member has a function, that member's
slice goes through its function and the others pass unchanged.

So a member's logits, gradients and (with an elementwise optimizer: Adam, AdamW, SGD) updates
are those of the same model alone, up to the order of floating-point sums in the loss
(tests/test_ensemble.py states the tolerance).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..names.sites import SiteInfo, builtin_catalogue
from ..tasks import Batch
from .builtin import Block, Transformer, apply_rope, pv, qk, scores_from

HookFn = Callable[[Tensor], Tensor]


class Stack(nn.Module):
    """The members' parameters stacked (`params`, in model.py's order and names) and one forward for all."""

    def __init__(self, models: list[Transformer]):
        super().__init__()
        m0 = models[0]
        self.shape, self.K = m0.shape, len(models)
        self.names = [n for n, _ in m0.named_parameters()]
        self.index = {n: i for i, n in enumerate(self.names)}
        per = [dict(m.named_parameters()) for m in models]
        self.params = nn.ParameterList(
            nn.Parameter(torch.stack([p[n].detach() for p in per])) for n in self.names)   # [K, ...] each
        self._template = [m0]                      # model.py's module (buffers; solo forwards), not a submodule
        self.fns: list[dict[str, HookFn]] = [{} for _ in models]   # each member's installed site functions
        self._subset: list[Tensor] | None = None   # while forward_batches runs some members: their parameters

    @property
    def template(self) -> Transformer:
        return self._template[0]

    def p(self, name: str) -> Tensor:
        active = self._subset
        return self.params[self.index[name]] if active is None else active[self.index[name]]

    def member(self, k: int) -> MemberSeam:
        return MemberSeam(self, k)

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's state_dict as model.py's module has it (copies)."""
        return {n: p[k].detach().clone() for n, p in zip(self.names, self.params)}

    @torch.no_grad()
    def load_member_state(self, k: int, state: Mapping[str, Tensor]) -> None:
        missing = set(self.names) ^ set(state)
        if missing:
            raise KeyError(f"state of member {k} does not match the model: {sorted(missing)}")
        for n, p in zip(self.names, self.params):
            p[k] = state[n]

    # -- the forward of all members ------------------------------------------------------------

    def _site(self, name: str, x: Tensor) -> Tensor:
        """Each member's function at site `name` applied to its slice of x [K, ...]."""
        have = [f.get(name) for f in self.fns]
        if not any(have):
            return x
        xs = x.unbind(0)                         # one backward for all slices (indexing would make K)
        return torch.stack([xs[k] if f is None else call_member(k, f, xs[k]) for k, f in enumerate(have)])

    def _ln(self, x: Tensor, prefix: str) -> Tensor:
        """LayerNorm per member, as model.LayerNorm computes it (fused unless its hook point has a fn)."""
        w, b = self.p(f"{prefix}.w"), self.p(f"{prefix}.b")        # [K, d_model]
        site = f"{prefix}.hook_normalized"
        out = []
        for k, (xk, wk, bk) in enumerate(zip(x.unbind(0), w.unbind(0), b.unbind(0))):
            f = self.fns[k].get(site)
            if f is None:
                out.append(F.layer_norm(xk, x.shape[-1:], wk, bk, eps=1e-5))
            else:
                out.append(call_member(k, f, F.layer_norm(xk, x.shape[-1:], eps=1e-5)) * wk + bk)
        return torch.stack(out)

    def _attn(self, x: Tensor, L: int, rope) -> Tensor:
        K, B, T, d = x.shape
        a = f"blocks.{L}.attn"
        W_Q, W_K, W_V, W_O = (self.p(f"{a}.{w}") for w in ("W_Q", "W_K", "W_V", "W_O"))
        # W_Q, W_K, W_V [K, head, d_model, d_head], W_O [K, head, d_head, d_model]
        H, e = W_Q.shape[1], W_Q.shape[3]
        W = torch.stack((W_Q, W_K, W_V), 1).permute(0, 3, 1, 2, 4).reshape(K, d, 3 * H * e)
        qkv = torch.bmm(x.reshape(K, B * T, d), W).view(K, B, T, 3, H, e)
        q, k, v = qkv.unbind(3)                                             # [K, batch, pos, head, d_head] each
        q = self._site(f"{a}.hook_q", q)
        k = self._site(f"{a}.hook_k", k)
        v = self._site(f"{a}.hook_v", v)
        if rope is not None:
            q = self._site(f"{a}.hook_rot_q", apply_rope(q.flatten(0, 1), rope).view_as(q))
            k = self._site(f"{a}.hook_rot_k", apply_rope(k.flatten(0, 1), rope).view_as(k))
        mask = self.template.mask
        scores = qk(q.transpose(2, 3), k.transpose(2, 3)) * (1.0 / math.sqrt(e))   # [K, batch, head, query, key]
        scores = self._site(f"{a}.hook_attn_scores", scores.masked_fill(~mask[:T, :T], float("-inf")))
        pattern = self._site(f"{a}.hook_pattern", scores.softmax(dim=-1))
        z = self._site(f"{a}.hook_z", pv(pattern, v.transpose(2, 3)).transpose(2, 3))  # [K, batch, pos, head, d_head]
        return torch.bmm(z.reshape(K, B * T, H * e), W_O.reshape(K, H * e, d)).view(K, B, T, d)

    def _mlp(self, x: Tensor, L: int) -> Tensor:
        K, B, T, d = x.shape
        m = f"blocks.{L}.mlp"
        W_in, b_in, W_out, b_out = (self.p(f"{m}.{w}") for w in ("W_in", "b_in", "W_out", "b_out"))
        pre = torch.bmm(x.reshape(K, B * T, d), W_in).view(K, B, T, -1) + b_in[:, None, None]   # [K, batch, pos, d_mlp]
        post = self._site(f"{m}.hook_post", F.gelu(self._site(f"{m}.hook_pre", pre)))
        return torch.bmm(post.reshape(K, B * T, -1), W_out).view(K, B, T, d) + b_out[:, None, None]

    def forward(self, tokens: Tensor, vectors: Tensor | None = None, is_vector: Tensor | None = None) -> Tensor:
        """tokens [K, batch, pos] (vectors [K, batch, pos, vector_dim], is_vector [K, batch, pos])
        → logits [K, batch, pos, n_out], member k's computed with member k's parameters and functions."""
        s = self.shape
        K, B, T = tokens.shape
        W_E = self.p("embed.W_E")                                               # [K, vocab, d_model]
        h = torch.stack([W[t] for W, t in zip(W_E.unbind(0), tokens.unbind(0))])   # [K, batch, pos, d_model]
        if s.vector_dim and vectors is not None:
            assert is_vector is not None
            xv = torch.bmm(vectors.reshape(K, B * T, -1), self.p("embed.W_x")).view(K, B, T, -1)
            h = torch.where(is_vector[..., None], xv, h)
        resid = self._site("hook_embed", h)
        if s.pos == "learned":
            resid = resid + self._site("hook_pos_embed", self.p("pos_embed.W_pos")[:, None, :T].expand_as(resid))
        rope = self.template.rope
        for L in range(s.layers):
            p = f"blocks.{L}"
            resid = self._site(f"{p}.hook_resid_pre", resid)
            x = self._ln(resid, f"{p}.ln1") if s.norm == "pre" else resid
            resid = resid + self._site(f"{p}.hook_attn_out", self._attn(x, L, rope))
            if not s.attn_only:
                resid = self._site(f"{p}.hook_resid_mid", resid)
                x = self._ln(resid, f"{p}.ln2") if s.norm == "pre" else resid
                resid = resid + self._site(f"{p}.hook_mlp_out", self._mlp(x, L))
            resid = self._site(f"{p}.hook_resid_post", resid)
        if s.norm == "pre":
            resid = self._ln(resid, "ln_final")
        K_, d, n = self.p("unembed.W_U").shape
        logits = torch.bmm(resid.reshape(K, B * T, d), self.p("unembed.W_U")).view(K, B, T, n) \
            + self.p("unembed.b_U")[:, None, None]
        return self._site("hook_logits", logits)                               # [K, batch, pos, n_out]

    def forward_batches(self, batches: list[Batch], members: list[int] | None = None) -> Tensor:
        """Logits [K, batch, pos, n_out] of member k on batches[k] (equal shapes); with `members`, only
        those members (copies of their parameters: for evaluation), batches[i] for members[i]."""
        b0 = batches[0]
        vec = None if b0.vectors is None else torch.stack([b.vectors for b in batches])
        isv = None if b0.is_vector is None else torch.stack([b.is_vector for b in batches])
        tokens = torch.stack([b.tokens for b in batches])
        if members is None:
            return self(tokens, vec, isv)
        saved = self.fns, self.K
        idx = torch.tensor(members, device=tokens.device)
        self._subset = [p.index_select(0, idx) for p in self.params]
        self.fns, self.K = [self.fns[k] for k in members], len(members)
        try:
            return self(tokens, vec, isv)
        except MemberError as e:
            raise MemberError(members[e.k], e.error) from e.error
        finally:
            self._subset = None
            self.fns, self.K = saved


class MemberError(Exception):
    """A member's site function raised: `k` is the member, `error` what it raised."""

    def __init__(self, k: int, error: BaseException):
        super().__init__(f"member {k}: {error}")
        self.k, self.error = k, error


def call_member(k: int, f: HookFn, x: Tensor) -> Tensor:
    try:
        return f(x)
    except Exception as e:  # noqa: BLE001 - attributed to its member; the ensemble fails that member alone
        raise MemberError(k, e) from e


class StackMember:
    """What every member seam shares: member k of a stack (`k` moves when the stack shrinks), its
    module (train()/eval() and its state_dict), and its site functions kept in `stack.fns[k]`."""

    def __init__(self, stack, k: int):
        self.stack, self.k = stack, k
        self.shape = stack.shape
        self.module = MemberModule(stack, k)

    def install(self, fns: Mapping[str, HookFn]) -> None:
        self.stack.fns[self.k] = dict(fns)


class MemberSeam(StackMember):
    """Member k of a Stack behind the model seam (seam.ModelSeam): a forward here is member k alone."""

    stack: Stack

    def catalogue(self) -> list[SiteInfo]:
        return builtin_catalogue(self.shape)

    def parameter_slice(self, site: str, heads: tuple[int, ...] | None) -> tuple[nn.Parameter, tuple]:
        p = self.stack.params[self.stack.index[site]]
        return p, (self.k,) if heads is None else (self.k, torch.tensor(heads, device=p.device))   # member, head

    def weight(self, name: str) -> Tensor:
        return self.stack.params[self.stack.index[name]][self.k]       # the whole stack's, also mid-subset

    def forward(self, batch: Batch) -> Tensor:
        st = self.stack
        m = st.template
        for name, hp in m.hook_points.items():
            hp.fn = st.fns[self.k].get(name)
        try:
            params = {n: p[self.k] for n, p in zip(st.names, st.params)}
            return functional_call(m, params, (batch.tokens, batch.vectors, batch.is_vector))
        finally:
            for hp in m.hook_points.values():
                hp.fn = None

    def attention_scores(self, layer: int, xq: Tensor, xk: Tensor) -> Tensor:
        m = self.stack.template
        block: Block = m.blocks[layer]
        a = f"blocks.{layer}"
        if block.ln1 is not None:
            w, b = self.weight(f"{a}.ln1.w"), self.weight(f"{a}.ln1.b")
            xq = F.layer_norm(xq, xq.shape[-1:], w, b, 1e-5)
            xk = F.layer_norm(xk, xk.shape[-1:], w, b, 1e-5)
        return scores_from(self.weight(f"{a}.attn.W_Q"), self.weight(f"{a}.attn.W_K"), xq, xk, m.mask, m.rope)


class MemberModule(nn.Module):
    """What the training loop asks of member k's module: train()/eval() and its state_dict."""

    def __init__(self, stack: Stack, k: int):
        super().__init__()
        self._stack = [stack]                             # not a submodule: the stack is not member k's
        self.k = k

    def state_dict(self, *args, **kwargs):
        return self._stack[0].member_state(self.k)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        self._stack[0].load_member_state(self.k, state)


def stack_of(models: list[Transformer]) -> Stack:
    """A Stack of freshly built (or loaded) models of one shape, on their device."""
    shapes = {m.shape for m in models}
    assert len(shapes) == 1, f"a stack's members share one shape, got {len(shapes)}"
    return Stack(models)
