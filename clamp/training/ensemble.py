"""Many runs as one: a group of compatible runs trained together as one batched model.

Run layer, beside train.py (one run) and under runs.py/benches.py (which group a recipe's seeds
or a suite's runs with `groups` and hand each group to `train_ensemble`). The members' models
are one stack (parameters with a leading member axis: `stacked.Stack` for the built-in model,
`folded.FoldedStack` for any adapted family, both from `seam.stack`) with one optimizer over the
stacked parameters — Adam, AdamW and SGD are elementwise, so that is exactly one optimizer per
member. Each member is a `Member` (train.Trainer behind the stack's member seam) with its own seed
(init and data stream), plan, interventions and windows, freezes (the slice of the stacked
parameter at its member index), probes, evaluations, stop rules, checkpoints and ordinary run
directory: the files `train_seed` would write, with the same values (tests/test_ensemble.py).

A step trains every live member at its own step: its own batch and its own active edits;
members preserving later patterns get their reference pass side by side with the others. An
evaluation runs each evaluator once for all the members due, each with its own recording. A
member that fails (a non-finite loss, an error in one of its value sources) is recorded as
failed and leaves; one that finishes or stops early leaves too; the stack is then rebuilt from
those left (parameters and optimizer state sliced), so nobody trains a passenger.

Runs can share an ensemble when `ensemble_key` gives them the same key: one shape that stacks
(seam.stack_problem), one task (name and options: equal batch shapes), and the same optimizer,
batch, evaluation schedule and sizes, threads, device and `train.compile` (compiled.py compiles
the stack's forward). Steps, stop rules, probes, measures, interventions and seeds may differ.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..measures import Outputs
from ..models.folded import FoldedMember, FoldedStack
from ..models.seam import stack as stack_models
from ..models.stacked import MemberError, MemberSeam, Stack
from ..names.errors import RunError
from ..recipe.compile import compile_plan
from ..recipe.types import Recipe, dump_recipe
from ..store.rundir import RunDir, run_metrics
from ..tasks import Batch
from . import optim
from .compiled import maybe_compiled, summary_of
from .train import RunProgress, Trainer, fill_grads, one_line, resolve_device, stop_now, summarise

Progress = Callable[[dict], None]
AnyStack = Stack | FoldedStack          # K models as one module: the built-in one recomputed, or folded

# Sequences per evaluation forward: members are evaluated together up to this many sequences (more
# runs slower than one member at a time on a CPU: the activations leave the caches;
# benchmarks/RESULTS.md "Ensembles").
EVAL_SEQUENCES = 512


class Member(Trainer):
    """One run of an ensemble: train.Trainer on member `k` of the stack, with its run directory's state."""

    def __init__(self, recipe: Recipe, seed: int, rd: RunDir, label: str | None, plan, seam: MemberSeam | FoldedMember,
                 optimizer):
        super().__init__(recipe, seed, plan, seam=seam, optimizer=optimizer)
        self.mseam = seam
        self.rd, self.label = rd, label
        self.progress = RunProgress()
        self.progress.plan, self.t0 = plan, time.perf_counter()
        self.metrics: Any = None                       # the open metrics.jsonl
        self.n_eval, self.evaluated_at, self.alive = 0, -1, True
        self.summary: dict | None = None
        self.index = 0                                 # its place in train_ensemble's entries

    def state(self) -> dict:
        return {"step": self.step, "model": self.mseam.stack.member_state(self.mseam.k),
                "optimizer": member_optimizer_state(self.optimizer, self.mseam.stack, self.mseam.k)}

    def load_state(self, state: dict) -> None:
        self.mseam.stack.load_member_state(self.mseam.k, state["model"])
        load_member_optimizer_state(self.optimizer, self.mseam.stack, self.mseam.k, state["optimizer"])
        self.step = int(state["step"])


def member_optimizer_state(opt, stack: AnyStack, k: int) -> dict:
    """Member k's optimizer state_dict, as its own optimizer alone would have it."""
    state = {}
    for i, p in enumerate(stack.params):
        d = {}
        for key, v in opt.state[p].items():
            if key == "step" and v.dim() > 0:
                v = v[k]
                d[key] = v.reshape(-1)[0].clone() if bool((v == v.reshape(-1)[0]).all()) else v.clone()
            elif isinstance(v, torch.Tensor) and v.shape == p.shape:
                d[key] = v[k].clone()
            else:
                d[key] = v.clone() if isinstance(v, torch.Tensor) else v
        state[i] = d
    groups_ = [{**{a: b for a, b in g.items() if a != "params"}, "params": list(range(len(stack.params)))}
               for g in opt.param_groups]
    return {"state": state, "param_groups": groups_}


@torch.no_grad()
def load_member_optimizer_state(opt, stack: Stack, k: int, sd: dict) -> None:
    for i, p in enumerate(stack.params):
        src = sd["state"].get(i, sd["state"].get(str(i), {}))
        dst = opt.state[p]
        for key, v in src.items():
            if key == "step":
                v = v.to(p.device)
                if dst["step"].dim() == 0 and v.dim() == 0 and bool(dst["step"] == v):
                    continue
                opt.split_step(p)
                dst["step"][k] = v
            elif isinstance(v, torch.Tensor) and key in dst:
                dst[key][k] = v.to(p.device)


def restack(stack: AnyStack, opt, keep: list[int], make_opt: Callable[[list[nn.Parameter]], Any]):
    """Shrink `stack` in place to the members `keep` (old indices, in order); returns the new optimizer,
    with every kept member's state sliced from `opt`."""
    idx = torch.tensor(keep, device=stack.params[0].device)
    old = list(stack.params)
    new = [nn.Parameter(p.detach()[idx].clone()) for p in old]
    new_opt = make_opt(new)
    with torch.no_grad():
        for p, q in zip(old, new):
            src, dst = opt.state[p], new_opt.state[q]
            for key, v in src.items():
                if not isinstance(v, torch.Tensor):
                    dst[key] = v
                elif v.dim() == 0:
                    dst[key] = v.clone()
                else:
                    dst[key] = v[idx].clone()
    stack.params = nn.ParameterList(new)
    stack.K = len(keep)
    stack.fns = [stack.fns[i] for i in keep]
    return new_opt, dict(zip(old, new))


class Ensemble:
    """The members of one stack and its optimizer; `train()` runs them to the end."""

    def __init__(self, members: list[Member], stack: AnyStack, emit: Progress):
        self.members, self.stack, self.emit = members, stack, emit
        opt = members[0].optimizer
        assert opt is not None, "an ensemble's members share the stack's optimizer"
        self.optimizer: optim.Optimizer = opt
        self._forward = maybe_compiled(stack.forward_batches, members[0].recipe.train.compile,  # one key: one
                                       "the ensemble's step")                                      # setting

    # -- forward passes of several members at once ------------------------------------------

    def forward(self, part: list[Member], batches: dict[Member, Batch], only: bool = False):
        """Logits [K, batch, pos, n_out] of every member in `part` on its batch, each with its active
        edits (and its reference pass where it preserves); the others' slots run unedited. With
        `only`, just the members of `part` run: logits [len(part), ...] in part's order."""
        slots = {m.mseam.k: m for m in part}
        filler = batches[part[0]]
        n = max(m.intervener.n_passes for m in part)
        gens = {m: m.intervener.passes(batches[m]) for m in part}
        logits = None
        for i in range(n):
            for k in range(self.stack.K):
                m = slots.get(k)
                run = m is not None and (m.intervener.n_passes == n or i == n - 1)
                self.stack.fns[k] = dict(next(gens[m])) if run else {}         # type: ignore[index]
            if only:
                # evaluation, a few members at a time: each subset its own graph, so eager
                logits = self.stack.forward_batches([batches[m] for m in part], [m.mseam.k for m in part])
            else:
                logits = self._forward([batches[slots[k]] if k in slots else filler
                                        for k in range(self.stack.K)])
        return logits

    # -- training --------------------------------------------------------------------------

    def step(self, live: list[Member]) -> None:
        """One optimizer step of every live member (each at its own step); a member that fails leaves."""
        while live:
            batches = {}
            for m in live:
                m.intervener.set_step(m.step)
                batches[m] = m.batch()
            try:
                logits = self.forward(live, batches)                      # [K, batch, pos, n_out]
            except MemberError as e:
                m = next(m for m in live if m.mseam.k == e.k)
                self.fail(m, e.error)
                live = [x for x in live if x is not m]
                continue
            K = self.stack.K
            targets = torch.stack([batches[m].targets if m in batches else batches[live[0]].targets
                                   for m in self._by_slot()])               # [K, batch, pos]
            nll = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=-100,
                                  reduction="none").view(K, -1)
            losses = nll.sum(1) / (targets != -100).view(K, -1).sum(1)       # [K]: each member's mean loss
            values = losses.tolist()
            ok = []
            for m in live:
                v = values[m.mseam.k]
                if math.isfinite(v):
                    ok.append(m)
                else:
                    self.fail(m, RunError(f"training loss became {v} at step {m.step}"))
            if not ok:
                return
            use = torch.zeros(K, dtype=torch.bool, device=losses.device)
            use[[m.mseam.k for m in ok]] = True
            self.optimizer.zero_grad(set_to_none=True)
            torch.where(use, losses, 0.0).sum().backward()
            fill_grads(self.stack.parameters())
            reached = torch.stack([p.grad.flatten(1).ne(0).any(1) for p in self.stack.params]).any(0).tolist()
            for m in [m for m in ok if not reached[m.mseam.k]]:       # alone, its loss would have no gradient
                self.fail(m, RunError(f"the loss has no gradient at step {m.step}: every path from a trained "
                                      "parameter to it is clamped or ablated"))
                ok.remove(m)
            self.optimizer.step()
            for m in ok:
                m.intervener.after_optimizer_step()
                m.step += 1
                m.progress.step = m.step
                m.progress.n_steps += 1
            return

    def _by_slot(self) -> list[Member]:
        slots: list[Member | None] = [None] * self.stack.K
        for m in self.members:
            if m.alive:
                slots[m.mseam.k] = m
        first = next(m for m in slots if m is not None)
        return [m if m is not None else first for m in slots]

    # -- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, due: list[Member]) -> None:
        """One evaluation of each member in `due` at its step: each evaluator's forward once for all."""
        todo = {}
        for m in list(due):
            try:
                todo[m] = m.eval_forwards()
            except Exception as e:  # noqa: BLE001 - that member fails, the others go on
                self.fail(m, e)
        due = [m for m in due if m in todo]
        keys = list(dict.fromkeys(key for m in due for key, _, _ in todo[m]))
        outputs: dict[Member, Outputs] = {m: {} for m in due}
        for key in keys:
            part = [m for m in due if m.alive and any(k == key for k, _, _ in todo[m])]
            size = max(len(next(b for k, b, _ in todo[m] if k == key)) for m in part) if part else 1
            per = max(1, EVAL_SEQUENCES // size)             # members per forward
            for chunk in [part[i:i + per] for i in range(0, len(part), per)]:
                while chunk:
                    try:
                        with ExitStack() as es:
                            recs = {m: es.enter_context(m.intervener.recording(
                                next(s for k, _, s in todo[m] if k == key))) for m in chunk}
                            logits = self.forward(chunk, {m: next(b for k, b, _ in todo[m] if k == key)
                                                          for m in chunk}, only=True)
                        for i, m in enumerate(chunk):
                            outputs[m][key] = (logits[i], recs[m])
                        break
                    except MemberError as e:
                        bad = next(m for m in chunk if m.mseam.k == e.k)
                        self.fail(bad, e.error)
                        chunk = [m for m in chunk if m is not bad]
        for m in due:
            if not m.alive:
                continue
            e0 = time.perf_counter()
            try:
                self._row(m, outputs[m])
            except Exception as e:  # noqa: BLE001 - that member fails, the others go on
                self.fail(m, e)
            m.progress.eval_s += time.perf_counter() - e0

    def _row(self, m: Member, outputs: Outputs) -> None:
        t = m.recipe.train
        last = m.step >= t.steps
        every = t.probe_every
        row = m.evaluate(probes=last or (every > 0 and m.n_eval % every == 0), outputs=outputs)
        m.progress.stopped = not last and stop_now(row, t.stop)
        if m.progress.stopped and not m.complete():               # a run's last row has every evaluator
            row = m.evaluate(probes=False, every=True)
        if m.progress.stopped and m.recipe.probes and not any("@" in k for k in row):
            m.evaluate_probes(row)
        m.n_eval += 1
        m.evaluated_at = m.step
        RunDir.append(m.metrics, row)
        m.progress.rows.append(row)
        self.emit(_tag(m, {"event": "eval", "seed": m.seed, "step": m.step, "steps": t.steps, "loss": row.get("loss")}))
        if last or m.progress.stopped:
            m.rd.save_checkpoint(m.step, m.state())
            self.finish(m, "ok", None)

    # -- members leaving -----------------------------------------------------------------------

    def fail(self, m: Member, e: BaseException) -> None:
        m.rd.fail(e)
        self.finish(m, "failed", one_line(e))

    def finish(self, m: Member, status: str, error: str | None) -> None:
        m.alive = False
        self.stack.fns[m.mseam.k] = {}
        m.progress.compile = summary_of(self._forward)
        if m.progress.compile.get("eager_fallback"):
            self.emit(_tag(m, {"event": "note", "seed": m.seed, "text": m.progress.compile["eager_fallback"]}))
        m.summary = m.rd.finish(summarise(m.recipe, m.seed, m.progress, m.t0, status, error,
                                          extra={"ensemble": {"members": len(self.members)}}))
        if m.metrics is not None:
            m.metrics.close()
        self.emit(_tag(m, {"event": "done", "seed": m.seed, "status": status, "error": error, "dir": str(m.rd.path)}))

    def shrink(self) -> None:
        """Rebuild the stack from the members still training."""
        live = [m for m in self.members if m.alive]
        if not live or len(live) == self.stack.K:
            return
        keep = [m.mseam.k for m in live]
        r = live[0].recipe
        opt, remap = restack(self.stack, self.optimizer, keep, lambda ps: stack_optimizer(r, ps))
        self.optimizer = opt
        for new_k, m in enumerate(live):
            m.mseam.k = new_k
            m.mseam.module.k = new_k
            m.optimizer = m.intervener.optimizer = opt
            for f in m.intervener._frozen.values():
                f.p = remap[f.p]
                f.idx = (new_k,) + tuple(f.idx[1:])

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> None:
        while True:
            live = [m for m in self.members if m.alive]
            due = [m for m in live if m.recipe.train.is_eval_step(m.step) and m.evaluated_at != m.step]
            if due:
                self.evaluate(due)
                live = [m for m in self.members if m.alive]
            if not live:
                return
            self.shrink()
            for m in live:
                ce = m.recipe.train.checkpoint_every
                if ce and m.step % ce == 0 and m.step > 0:
                    m.rd.save_checkpoint(m.step, m.state())
            s0 = time.perf_counter()
            self.step(live)
            dt = time.perf_counter() - s0
            for m in live:
                m.progress.train_s += dt


def stack_optimizer(recipe: Recipe, params: list[nn.Parameter]):
    """The recipe's optimizer over stacked parameters, each member's slice updated as a tensor of its own."""
    t = recipe.train
    return optim.make_optimizer(t.optimizer, params, t.lr, t.betas, t.weight_decay, members=True)


def _tag(m: Member, ev: dict) -> dict:
    return ev if m.label is None else {**ev, "run": m.label}


def train_ensemble(entries: Sequence[tuple[Recipe, int, str | Path, str | None]],
                   progress: Progress | None = None) -> list[dict | str]:
    """Train runs (recipe, seed, run directory, progress label) that share one `ensemble_key` as one
    ensemble. Per entry: its summary.json's dict, or the one-line error that kept it from starting
    (as train_seed would have raised it). Finished runs are returned as they are; partial ones resume
    from their last checkpoint, each at its own step."""
    emit = progress or (lambda ev: None)
    results: list[dict | str | None] = [None] * len(entries)
    with ExitStack() as held:
        todo = []
        for i, (recipe, seed, run_dir, label) in enumerate(entries):
            rd = RunDir(run_dir)
            one = replace(recipe, seeds=(seed,))
            resolved = dump_recipe(one)
            try:
                rd.check(resolved)
                held.enter_context(rd.held())
                done = rd.begin(resolved)
            except Exception as e:  # noqa: BLE001 - this run cannot start; the others go on
                results[i] = one_line(e)
                continue
            if done is not None:
                results[i] = done
                continue
            todo.append((i, one, seed, rd, label))
        if todo:
            for i, summary in _train_members(todo, emit).items():
                results[i] = summary
    return [r if r is not None else "not run" for r in results]


def _train_members(todo: list, emit: Progress) -> dict[int, dict]:
    device = resolve_device(todo[0][1].train.device)
    stack = stack_models(todo[0][1].shape(), [seed for _, _, seed, _, _ in todo], device)
    opt = stack_optimizer(todo[0][1], list(stack.params))
    members: list[Member] = []
    t0 = time.perf_counter()
    failed: dict[int, dict] = {}
    for k, (i, one, seed, rd, label) in enumerate(todo):
        try:
            plan = compile_plan(one, seed, metrics_of=run_metrics)
            rd.write_plan(plan.text())
            m = Member(one, seed, rd, label, plan, stack.member(k), opt)
        except Exception as e:  # noqa: BLE001 - this member fails before it starts; the others go on
            rd.fail(e)
            failed[i] = rd.finish(summarise(one, seed, RunProgress(), t0, "failed", one_line(e)))
            continue
        m.index = i
        members.append(m)
    ens = Ensemble(members, stack, emit)
    ens.shrink()                                      # members that failed before starting leave the stack
    for m in members:
        st = m.progress
        st.device = device
        try:
            st.step, st.rows, st.skipped = m.rd.resume(m.load_state)
        except Exception as e:  # noqa: BLE001 - no checkpoint of this member loads: it fails, the others go on
            ens.fail(m, e)
            continue
        st.resumed_from = st.step
        if st.skipped:
            emit(_tag(m, {"event": "resumed", "seed": m.seed, "step": m.step, "skipped": st.skipped,
                          "dir": str(m.rd.path)}))
        m.n_eval = len(st.rows)
        m.metrics = m.rd.metrics_appender()
        emit(_tag(m, {"event": "start", "seed": m.seed, "step": m.step, "steps": m.recipe.train.steps,
                      "dir": str(m.rd.path)}))
    ens.shrink()                                      # and those none of whose checkpoints loaded
    try:
        ens.train()
    except KeyboardInterrupt:
        for m in members:
            if m.alive:
                ens.finish(m, "interrupted", "interrupted (run the same command to resume)")
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is recorded, none looks like success
        for m in members:
            if m.alive:
                ens.fail(m, e)
    finally:
        for m in members:
            if m.alive:
                m.intervener.detach()
    return {**failed, **{m.index: m.summary or {} for m in members}}
