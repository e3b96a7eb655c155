"""Run many independent jobs on local worker processes, forwarding their progress events.

Used by `clamp.run` (one job per seed) and bench.py (one job per variant × seed). Jobs are
module-level functions with picklable arguments. Workers are forked (so tasks and value
sources registered in the calling program exist in them too) and set torch to the
run's thread count before any work; with one worker, jobs run in this process.

A job that raises does not stop the others: its result carries the error text.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


def _call(job: Job):
    torch.set_num_threads(job.threads)
    try:
        return Outcome(job.key, job.fn(*job.args, progress=_emit))
    except Exception as e:  # noqa: BLE001 - reported per job, the others go on
        return Outcome(job.key, None, _describe(e))


def _describe(e: BaseException) -> str:
    from .errors import InputError, RunError
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
                torch.set_num_threads(job.threads)
                try:
                    out = Outcome(job.key, job.fn(*job.args, progress=on_event))
                except Exception as e:  # noqa: BLE001
                    out = Outcome(job.key, None, _describe(e))
                results[i] = out
                on_done(out)
        finally:
            torch.set_num_threads(before)
        return [results[i] for i in range(len(jobs))]

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    events = ctx.Queue()
    stop = threading.Event()

    def drain():
        while not stop.is_set() or not events.empty():
            try:
                on_event(events.get(timeout=0.1))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                break

    pump = threading.Thread(target=drain, daemon=True)
    pump.start()
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                 initializer=_init, initargs=(events,)) as ex:
            futures = {ex.submit(_call, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futures[f]
                    try:
                        out = f.result()
                    except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                        out = Outcome(jobs[i].key, None, f"worker process failed: {_describe(e)}")
                    results[i] = out
                    on_done(out)
    finally:
        stop.set()
        pump.join(timeout=5)
    return [results[i] for i in range(len(jobs))]
