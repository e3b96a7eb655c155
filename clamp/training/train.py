"""One explicit training loop, and the run it writes.

Run layer. Flow position: Plan ─train→ run dir. `train_seed` trains one seed into one run
directory (its files, and how a run starts, resumes and finishes, are store/rundir.py's RunDir).
Running again in the same directory resumes: a finished run is returned as is; an interrupted
one restarts from its newest loadable checkpoint and, since each step's batch is a pure
function of (seed, step), reproduces the uninterrupted run exactly.

An evaluation at step s measures the model after s updates with the interventions active
at step s (at the final step: those of the last step).
"""
from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

import torch

from ..measures import MEASURES, Measure, Outputs, evaluate, forwards, instances, needs_repeats, run_forwards, score
from ..models.seam import ModelSeam, build
from ..names.columns import probe_column
from ..names.errors import InputError, RunError
from ..names.phases import column_value, phase_times
from ..recipe.compile import Plan, compile_plan
from ..recipe.types import Recipe, dump_recipe
from ..store.files import read_metrics  # noqa: F401 - scripts read metrics from here
from ..store.provenance import environment
from ..store.rundir import RunDir, run_metrics
from ..tasks import TASKS, Batch, Task
from ..tasks.base import next_token_loss
from . import optim
from .compiled import Compiled, maybe_compiled, summary_of
from .donor import Donors
from .hooks import Intervener

Progress = Callable[[dict], None]
DATA_CHUNK = 16          # training batches made at once (the same batches as one at a time)


def make_optimizer(recipe: Recipe, model: torch.nn.Module) -> optim.Optimizer:
    t = recipe.train
    return optim.make_optimizer(t.optimizer, model.parameters(), t.lr, t.betas, t.weight_decay)


loss_fn = next_token_loss        # the default training loss (Task.loss), for scripts and benchmarks


class Trainer:
    """The pieces of one run, built from a recipe and a seed (usable without a directory)."""

    def __init__(self, recipe: Recipe, seed: int, plan: Plan | None = None, *, seam: ModelSeam | None = None,
                 optimizer: optim.Optimizer | None = None, train: bool = True):
        """`seam` and `optimizer`, when given, are a model (and its optimizer) built elsewhere: an
        ensemble's member (ensemble.py); otherwise the recipe's model is built from `seed` on the
        recipe's device. `train=False`: a reader of checkpoints (reports, probes) that evaluates and
        never steps: no optimizer is made (making one costs ~2 s of torch imports), `load_state`
        loads the weights and the step."""
        self.recipe = recipe
        self.seed = seed
        self.device = resolve_device(recipe.train.device)
        self.plan = plan or compile_plan(recipe, seed, metrics_of=run_metrics)
        self.task: Task = TASKS[recipe.task.name](recipe.task.options, seed)
        if seam is None:
            seam = build(recipe.shape(), seed)
            seam.module.to(self.device)
        self.seam: ModelSeam = seam
        self.model = self.seam.module
        self.optimizer: optim.Optimizer | None = (optimizer if optimizer is not None else
                                                  make_optimizer(recipe, self.model) if train else None)
        self.donors = Donors()
        self.measures: dict[str, Measure] = instances(recipe.measure, self.task, self.plan.shape)    # one per run
        self._probe_measures = instances([m for m in ("loss", "accuracy") if m in MEASURES and
                                          not MEASURES[m].unavailable(type(self.task), recipe.task.options,
                                                                      self.plan.shape)], self.task, self.plan.shape)
        self.intervener = Intervener(self.seam, self.plan, self.optimizer, seed=seed, donor=self.donors,
                                     task=self.task)
        self.step = 0
        self._evaluators: dict[str, Batch] | None = None       # built at the first evaluation
        self._chunk: tuple[int, list[Batch]] = (0, [])          # (first step, its training batches)
        self._repeats: Batch | None = None
        self._probes: dict[str, Intervener] = {}      # probe name → its Intervener (static heads)
        self.compiled = recipe.train.compile and train         # a reader of checkpoints evaluates a few times: eager
        self._loss = maybe_compiled(self._forward_loss, self.compiled)
        self._eval_forward = maybe_compiled(self.intervener.forward, self.compiled, "evaluation")

    def _forward_loss(self, batch: Batch) -> torch.Tensor:
        """The training loss of one batch with this step's interventions (the part train.compile compiles)."""
        return self.task.loss(self.intervener.forward(batch), batch)

    def compile_summary(self) -> dict:
        """summary.json's `compile`: whether the step was compiled, and why it fell back to eager if it did."""
        steps, evals = summary_of(self._loss), summary_of(self._eval_forward)
        return {**steps, "eager_fallback": steps.get("eager_fallback") or evals.get("eager_fallback")} \
            if steps["enabled"] else steps

    def train_step(self, batch: Batch | None = None) -> float:
        """One optimizer step at self.step with that step's interventions; returns the loss.
        `batch` (benchmarks: pre-generated batches) replaces the task's batch for this step."""
        self.intervener.set_step(self.step)
        batch = batch if batch is not None else self.batch()
        loss = self._loss(batch)
        value = loss.item()
        if not math.isfinite(value):
            raise RunError(f"training loss became {value} at step {self.step}")
        if not loss.requires_grad:
            raise RunError(f"the loss has no gradient at step {self.step}: every path from a trained parameter "
                           "to it is clamped or ablated")
        assert self.optimizer is not None, "a reader (train=False) does not train"
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except Exception as e:
            if not isinstance(self._loss, Compiled) or self._loss.eager:
                raise
            self._loss.fall_back(e)                  # its compiled backward failed: this step again, eagerly
            self.optimizer.zero_grad(set_to_none=True)
            self._loss(batch).backward()
        fill_grads(self.model.parameters())
        self.optimizer.step()
        self.intervener.after_optimizer_step()
        self.step += 1
        return value

    def batch(self) -> Batch:
        """This step's training batch, on the run's device (made DATA_CHUNK steps at a time: the same
        batches, task.train_batches)."""
        start, chunk = self._chunk
        if not start <= self.step < start + len(chunk):
            n = min(DATA_CHUNK, self.recipe.train.steps - self.step)
            self._chunk = (self.step, self.task.train_batches(self.step, max(n, 1), self.recipe.train.batch))
            start, chunk = self._chunk
        return chunk[self.step - start].to(self.device)

    def eval_forwards(self, every: bool = False) -> list[tuple[str, Batch, list[str]]]:
        """The forwards an evaluation at this step runs (measures.forwards), with the step's edits set:
        the evaluators due at this step (`train.evaluator_every`), or with `every` all of them."""
        return forwards(*self._due(every), self.recipe.measure, self.plan.shape)

    def _due(self, every: bool) -> tuple[dict[str, Batch], Batch | None]:
        r = self.recipe
        if self._evaluators is None:
            evs = self.task.evaluators(r.train.eval_size)
            self._evaluators = {k: v.to(self.device) for k, v in evs.items()
                                if not r.train.evaluators or k in r.train.evaluators}
            rep = self.task.repeated_segments(r.train.eval_size) if needs_repeats(r.measure) else None
            self._repeats = None if rep is None else rep.to(self.device)
        self.intervener.set_step(min(self.step, r.train.steps - 1))
        sparse = r.train.evaluator_every
        if every or not sparse or self.step == 0 or self.step >= r.train.steps:
            return self._evaluators, self._repeats
        return {k: v for k, v in self._evaluators.items() if self.step % sparse.get(k, 1) == 0}, self._repeats

    def complete(self) -> bool:
        """Whether an evaluation at this step runs every evaluator (see `train.evaluator_every`)."""
        r = self.recipe
        return not r.train.evaluator_every or self.step == 0 or self.step >= r.train.steps or \
            all(self.step % n == 0 for n in r.train.evaluator_every.values())

    @torch.no_grad()
    def evaluate(self, probes: bool = True, outputs: Outputs | None = None, every: bool = False) -> dict:
        """One metrics row: measures at this step, then each probe's loss/accuracy (`col@probe`).
        `outputs`: the results of `eval_forwards()` when they ran elsewhere (an ensemble); `every`: run
        every evaluator, also those `train.evaluator_every` skips at this step."""
        r = self.recipe
        evs, reps = self._due(every)
        self.model.eval()
        row: dict = {"step": self.step, "sequences": self.step * r.train.batch, "seed": self.seed}
        todo = forwards(evs, reps, r.measure, self.plan.shape)
        if outputs is None:
            outputs = run_forwards(self.intervener, todo, self._eval_forward)
        row.update(score(outputs, todo, self.measures, self.seam))
        if probes:
            self.evaluate_probes(row)
        self.intervener.attach()
        self.model.train()
        return row

    @torch.no_grad()
    def evaluate_probes(self, row: dict) -> None:
        """Add each probe's loss/accuracy columns (`col@probe`) to a metrics row of this step."""
        r = self.recipe
        at = min(self.step, r.train.steps - 1)
        assert self._evaluators is not None, "evaluate() builds the evaluation sets first"
        self.model.eval()
        for name in r.probes:
            iv, notes = self._probe_intervener(name, row)
            iv.set_step(at)
            prow = evaluate(iv, self._evaluators, None, self._probe_measures, self.plan.shape)
            row.update({probe_column(k, name): v for k, v in prow.items()})
            if notes:
                row[probe_column("heads", name)] = notes
        self.intervener.attach()
        self.model.train()

    def _probe_intervener(self, name: str, row: dict) -> tuple[Intervener, dict]:
        """The probe's Intervener; compiled afresh when its heads are chosen from this run's measures."""
        r = self.recipe
        used = {iv.target for iv in r.probes[name]} | {iv.target for iv in r.interventions}
        selects = [r.subcircuits[t].select for t in used if t in r.subcircuits]
        dynamic = any(s is not None and s.run == "self" for s in selects)
        if name not in self._probes or dynamic:
            plan = compile_plan(r, self.seed, probe=name, measured=row, metrics_of=run_metrics)
            self._probes[name] = Intervener(self.seam, plan, None, seed=self.seed, donor=self.donors, task=self.task)
        iv = self._probes[name]
        notes = {e.label: list(e.site.heads or ()) for e in iv.plan.edits if e.note} if dynamic else {}
        return iv, notes

    def state(self) -> dict:
        assert self.optimizer is not None, "a reader (train=False) has no training state"
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


def fill_grads(params) -> None:
    """A parameter no path reaches (its site fully replaced) gets a zero gradient instead of None, so
    the optimizer steps it as optax does in Singh et al.'s JAX code (moments decay, weight decay
    applies, its step count moves), and a run trained in an ensemble, where the stacked
    parameter always has a gradient, moves exactly as it would alone."""
    for p in params:
        if p.grad is None and p.requires_grad:
            p.grad = torch.zeros_like(p)


def resolve_device(name: str) -> torch.device:
    """`train.device`: cpu, cuda (refused where there is none), or auto (cuda when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("", "train.device", "'cuda'", "a device this machine has: cpu (no CUDA device is visible)",
                         "use device: auto (cuda where present, else cpu), or run on a machine with a GPU")
    return torch.device(name)


def stop_now(row: dict, rules: dict) -> bool:
    """True when a metrics row meets every stop rule ({column: {below|above: x}})."""
    if not rules:
        return False
    for col, rule in rules.items():
        v = column_value(row, col)
        if v is None or ("below" in rule and not v < rule["below"]) or ("above" in rule and not v > rule["above"]):
            return False
    return True


def one_line(e: BaseException) -> str:
    """A failure as one line: the message, and where in clamp (or torch) it was raised."""
    if isinstance(e, (InputError, RunError)):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:240]}{where}"


def train_seed(recipe: Recipe, seed: int, run_dir: str | os.PathLike, progress: Progress | None = None) -> dict:
    """Train one seed into `run_dir` (resuming if it holds a partial run); returns summary.json's dict.

    A run that does not finish, for any reason, still writes summary.json: status 'failed', a
    one-line reason, the step it reached, and the full traceback in error.log beside it."""
    rd = RunDir(run_dir)
    one = replace(recipe, seeds=(seed,))
    resolved = dump_recipe(one)
    rd.check(resolved)                                  # bad input: refused before anything is written
    with rd.held():
        done = rd.begin(resolved)
        if done is not None:
            return done
        state = RunProgress()
        t0 = time.perf_counter()
        emit = progress or (lambda ev: None)
        try:
            _train(one, seed, rd, emit, state)
            status, error = "ok", None
        except KeyboardInterrupt:
            rd.finish(summarise(one, seed, state, t0, "interrupted", "interrupted (run the same command to resume)"))
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is recorded, none looks like success
            status, error = "failed", one_line(e)
            rd.fail(e)
        summary = rd.finish(summarise(one, seed, state, t0, status, error))
    emit({"event": "done", "seed": seed, "status": status, "error": error, "dir": str(rd.path)})
    return summary


def extensions_for(recipe: Recipe) -> dict:
    """The task, value-source and measure classes a recipe uses (in training and in probes), so a
    worker that did not import the caller's code (a Ray worker, a spawned process) can register them
    before training. (Plug-in modules travel by value to Ray workers: raybackend.py.)"""
    from ..tasks import TASKS
    from ..values.base import VALUES
    used = [*recipe.interventions, *(iv for ivs in recipe.probes.values() for iv in ivs)]
    return {"tasks": {recipe.task.name: TASKS[recipe.task.name]},
            "values": {iv.source: VALUES[iv.source] for iv in used if iv.source and iv.source in VALUES},
            "measures": {m: MEASURES[m] for m in recipe.measure if m in MEASURES}}


def install_extensions(ext: dict) -> None:
    from ..tasks import TASKS
    from ..values.base import VALUES
    for table, key in ((TASKS, "tasks"), (VALUES, "values"), (MEASURES, "measures")):
        for name, cls in ext.get(key, {}).items():
            table.setdefault(name, cls)


class RunProgress:
    """What a run reached, for its summary however it ended."""

    def __init__(self):
        self.step = 0
        self.resumed_from = 0
        self.rows: list[dict] = []
        self.train_s = self.eval_s = 0.0
        self.n_steps = 0
        self.stopped = False
        self.plan: Plan | None = None
        self.skipped: list[dict] = []          # newer checkpoints that could not be resumed from
        self.device: torch.device | None = None  # the device the run resolved to (None: failed before)
        self.compile: dict | None = None          # train.compile: enabled, and why it fell back to eager


def _train(recipe: Recipe, seed: int, rd: RunDir, emit: Progress, st: RunProgress) -> None:
    t = recipe.train
    plan = st.plan = compile_plan(recipe, seed, metrics_of=run_metrics)
    rd.write_plan(plan.text())
    trainer = Trainer(recipe, seed, plan)
    st.device = trainer.device
    st.step, st.rows, st.skipped = rd.resume(trainer.load_state)
    st.resumed_from = st.step
    if st.skipped:
        emit({"event": "resumed", "seed": seed, "step": trainer.step, "skipped": st.skipped, "dir": str(rd.path)})
    emit({"event": "start", "seed": seed, "step": trainer.step, "steps": t.steps, "dir": str(rd.path)})
    n_eval = len(st.rows)
    try:
        with rd.metrics_appender() as mf:
            while True:
                if t.is_eval_step(trainer.step):
                    e0 = time.perf_counter()
                    last = trainer.step >= t.steps
                    every = t.probe_every
                    row = trainer.evaluate(probes=last or (every > 0 and n_eval % every == 0))
                    st.stopped = not last and stop_now(row, t.stop)
                    if st.stopped and not trainer.complete():     # a run's last row has every evaluator
                        row = trainer.evaluate(probes=False, every=True)
                    if st.stopped and recipe.probes and not any("@" in k for k in row):
                        trainer.evaluate_probes(row)
                    n_eval += 1
                    st.eval_s += time.perf_counter() - e0
                    RunDir.append(mf, row)
                    st.rows.append(row)
                    emit({"event": "eval", "seed": seed, "step": trainer.step, "steps": t.steps,
                          "loss": row.get("loss")})
                if trainer.step >= t.steps or st.stopped:
                    break
                if t.checkpoint_every and trainer.step % t.checkpoint_every == 0 and trainer.step > 0:
                    rd.save_checkpoint(trainer.step, trainer.state())
                s0 = time.perf_counter()
                trainer.train_step()
                st.step = trainer.step
                st.train_s += time.perf_counter() - s0
                st.n_steps += 1
        rd.save_checkpoint(trainer.step, trainer.state())
    finally:
        trainer.intervener.detach()
        st.compile = trainer.compile_summary()
        if st.compile.get("eager_fallback"):
            emit({"event": "note", "seed": seed, "text": st.compile["eager_fallback"]})


def summarise(recipe: Recipe, seed: int, st: RunProgress, t0: float, status: str, error: str | None,
              extra: dict | None = None) -> dict:
    """summary.json's content for a run that reached `st` and ended with `status`."""
    t = recipe.train
    summary = {
        "name": recipe.name, "seed": seed, "status": status, "error": error,
        "steps": st.step, "sequences": st.step * t.batch, "resumed_from": st.resumed_from,
        "stopped_early": st.stopped,
        "final": {k: v for k, v in st.rows[-1].items() if k not in ("step", "sequences", "seed")} if st.rows else {},
        "phases": phase_times(st.rows, recipe.phases, t.batch),
        "wall_s": round(time.perf_counter() - t0, 3),
        "train_ms_per_step": round(1e3 * st.train_s / max(st.n_steps, 1), 4),
        "eval_ms_per_eval": round(1e3 * st.eval_s / max(len(st.rows), 1), 3),
    }
    if status != "ok":
        summary["error_step"] = st.step
    if st.skipped:
        summary["skipped_checkpoints"] = st.skipped
    if st.plan is not None:
        for m in instances(recipe.measure, None, st.plan.shape).values():
            summary.update(m.summary())
    if st.compile is not None:
        summary["compile"] = st.compile
    summary["environment"] = environment(st.device)
    summary.update(extra or {})
    return summary
