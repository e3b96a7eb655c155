"""The Ray backend of `clamp bench`: the same jobs as pool.py, scheduled by Ray.

Optional (`pip install 'clamp[ray]'`). Each job becomes a Ray task that asks for as many
CPUs as the run uses threads, so Ray's scheduler packs runs onto the cluster's cores;
`address` joins an existing cluster (`ray start --head` elsewhere), otherwise a local one
is started in-process with one CPU per core and shut down at the end. Progress events go
back through a Ray queue; a task whose worker dies is reported as failed and the others
go on. Runs write their directories on the machine that runs them, so on a multi-machine
cluster the suite directory must be on a shared filesystem.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from .errors import InputError
from .pool import Job, Outcome, _describe, available_cores


def _import_ray():
    try:
        import ray
        return ray
    except ImportError:
        raise InputError("--backend", "", "ray, which is not installed", "the local backend, or Ray installed",
                         "pip install 'clamp[ray]'") from None


def run_jobs_ray(jobs: Sequence[Job], address: str | None = None, on_event: Callable[[dict], None] | None = None,
                 on_done: Callable[[Outcome], None] | None = None, num_cpus: int | None = None) -> list[Outcome]:
    ray = _import_ray()
    from ray.util.queue import Queue
    on_event = on_event or (lambda ev: None)
    on_done = on_done or (lambda o: None)
    started = False
    if not ray.is_initialized():
        kw = dict(address=address) if address else dict(num_cpus=num_cpus or available_cores())
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
        started = True
    try:
        events = Queue()

        @ray.remote(max_retries=0)
        def call(job: Job, queue) -> Outcome:
            import torch
            torch.set_num_threads(job.threads)
            try:
                return Outcome(job.key, job.fn(*job.args, progress=queue.put_nowait))
            except Exception as e:  # noqa: BLE001 - reported per job
                return Outcome(job.key, None, _describe(e))

        refs = {call.options(num_cpus=job.threads).remote(job, events): i for i, job in enumerate(jobs)}
        stop = threading.Event()

        def drain():
            while not stop.is_set():
                try:
                    for ev in events.get_nowait_batch(events.qsize()):
                        on_event(ev)
                except Exception:  # noqa: BLE001 - queue empty or closing
                    pass
                time.sleep(0.2)

        pump = threading.Thread(target=drain, daemon=True)
        pump.start()
        results: dict[int, Outcome] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                i = refs[ref]
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the worker died
                    out = Outcome(jobs[i].key, None, f"Ray task failed: {_describe(e)}")
                results[i] = out
                on_done(out)
        stop.set()
        pump.join(timeout=2)
        return [results[i] for i in range(len(jobs))]
    finally:
        if started:
            ray.shutdown()
