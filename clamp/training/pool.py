"""Run many independent jobs on local worker processes, forwarding their progress events.

Used by `clamp.run` (one job per seed) and benches.py (one job per variant × seed). Jobs are
module-level functions with picklable arguments. Each job runs in a process of its own, forked
(so tasks and value sources registered in the calling program exist in it too), at most
`workers` at a time, with torch set to the run's thread count before any work; with one
worker, jobs run in this process.

A job that raises does not stop the others: its result carries the error text. A worker that
dies (killed, out of memory) fails its own job only.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

Event = dict
_events: Any = None          # the worker's event queue (set by _init)


@dataclass
class Job:
    key: Any                  # the caller's name for it
    fn: Callable[..., Any]    # called as fn(*args, progress=...)
    args: tuple
    threads: int = 1


@dataclass
class Outcome:
    key: Any
    value: Any = None
    error: str | None = None


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _init(events) -> None:
    global _events
    _events = events


def _emit(event: Event) -> None:
    if _events is not None:
        _events.put(event)


def run_job(job: Job, progress: Callable[[Event], None]) -> Outcome:
    """One job at its thread count; an exception is its failure (the others go on)."""
    torch.set_num_threads(job.threads)
    try:
        return Outcome(job.key, job.fn(*job.args, progress=progress))
    except Exception as e:  # noqa: BLE001 - reported per job, the others go on
        return Outcome(job.key, None, _describe(e))


def _call(job: Job) -> Outcome:
    return run_job(job, _emit)


def _describe(e: BaseException) -> str:
    from ..names.errors import InputError, RunError
    if isinstance(e, (InputError, RunError)):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def run_jobs(jobs: Sequence[Job], workers: int, on_event: Callable[[Event], None] | None = None,
             on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run `jobs` on up to `workers` processes; results in job order."""
    on_event = on_event or (lambda ev: None)
    on_done = on_done or (lambda o: None)
    results: dict[int, Outcome] = {}
    if workers <= 1 or len(jobs) <= 1:
        before = torch.get_num_threads()
        try:
            for i, job in enumerate(jobs):
                out = run_job(job, on_event)
                results[i] = out
                on_done(out)
        finally:
            torch.set_num_threads(before)
        return [results[i] for i in range(len(jobs))]

    fork = "fork" in mp.get_all_start_methods()
    ctx = mp.get_context("fork" if fork else "spawn")
    if fork:       # torch imports its compiler at the first optimizer a process makes (~2 s of CPU):
        importlib.import_module("torch._dynamo")   # once here, shared by every forked worker
    events = ctx.Queue()

    def get() -> list[Event]:
        try:
            return [events.get(timeout=0.1)]
        except queue.Empty:
            return []
    with forwarding(get, on_event):
        return _processes(jobs, workers, ctx, events, on_done)


def _child(job: Job, conn, events) -> None:
    """A worker process: one job, its outcome sent back on `conn`."""
    _init(events)
    out = _call(job)
    try:
        conn.send(out)
    except Exception as e:  # noqa: BLE001 - an outcome that cannot be pickled is still an outcome
        conn.send(Outcome(job.key, None, f"its result could not be sent back: {_describe(e)}"))
    conn.close()


def _processes(jobs: Sequence[Job], workers: int, ctx, events, on_done: Callable[[Outcome], None]) -> list[Outcome]:
    """Each job in a process of its own, at most `workers` at a time: a worker that dies (killed, out of
    memory) fails its own job only; the jobs not started yet start as usual."""
    results: dict[int, Outcome] = {}
    running: dict[int, tuple[Any, Any]] = {}              # job index → (process, receiving end)
    todo = list(range(len(jobs)))
    try:
        while todo or running:
            while todo and len(running) < workers:
                i = todo.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(jobs[i], send, events))
                proc.start()
                send.close()
                running[i] = (proc, recv)
            ready = mp.connection.wait([c for _, c in running.values()] + [p.sentinel for p, _ in running.values()])
            for i, (proc, recv) in list(running.items()):
                if recv not in ready and proc.sentinel not in ready:
                    continue
                try:
                    out = recv.recv() if recv.poll() else None
                except (EOFError, OSError):
                    out = None
                proc.join()
                recv.close()
                if out is None:
                    code = proc.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    out = Outcome(jobs[i].key, None, f"worker process failed: it died ({how}) before finishing")
                del running[i]
                results[i] = out
                on_done(out)
    finally:
        for proc, recv in running.values():              # interrupted: the others stop too
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            recv.close()
    return [results[i] for i in range(len(jobs))]


def collect(futures: dict[Future, int], jobs: Sequence[Job], on_done: Callable[[Outcome], None],
            what: str) -> list[Outcome]:
    """Wait for every future (job index → it), calling `on_done` as each finishes; a future that
    raises (its worker died: killed, out of memory) is that job's failure. Results in job order.
    The one loop behind both backends (local processes here, Ray tasks as futures in raybackend.py)."""
    results: dict[int, Outcome] = {}
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for f in done:
            i = futures[f]
            try:
                out = f.result()
            except Exception as e:  # noqa: BLE001 - a worker died
                out = Outcome(jobs[i].key, None, f"{what} failed: {_describe(e)}")
            results[i] = out
            on_done(out)
    return [results[i] for i in range(len(jobs))]


@contextmanager
def forwarding(get: Callable[[], list[Event]], on_event: Callable[[Event], None]) -> Iterator[None]:
    """While the block runs, a thread passes the workers' progress events (`get()`: a batch, possibly
    empty, waiting briefly) to `on_event` in this process; the last ones are drained at the end."""
    stop = threading.Event()

    def pump() -> None:
        while True:
            last = stop.is_set()
            try:
                batch = get()
            except (EOFError, OSError):
                return
            for ev in batch:
                on_event(ev)
            if last and not batch:
                return
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
