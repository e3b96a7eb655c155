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

import time
from collections.abc import Callable, Sequence

from ..names.errors import InputError
from .pool import Job, Outcome, available_cores, collect, forwarding, run_job


def require_ray():
    try:
        import ray
        return ray
    except ImportError:
        raise InputError("--backend", "", "ray, which is not installed", "the local backend, or Ray installed",
                         "pip install 'clamp[ray]'") from None


def run_jobs_ray(jobs: Sequence[Job], address: str | None = None, on_event: Callable[[dict], None] | None = None,
                 on_done: Callable[[Outcome], None] | None = None, num_cpus: int | None = None) -> list[Outcome]:
    ray = require_ray()
    from ray.util.queue import Queue
    on_event = on_event or (lambda ev: None)
    on_done = on_done or (lambda o: None)
    started = False
    if not ray.is_initialized():
        kw = dict(address=address) if address else dict(num_cpus=num_cpus or available_cores())
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
        started = True
    from ..models.plugins import LOADED
    for module in LOADED.values():          # plug-ins imported from files: their classes travel by value
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        events = Queue()

        @ray.remote(max_retries=0)
        def call(job: Job, queue) -> Outcome:
            return run_job(job, queue.put_nowait)

        futures = {call.options(num_cpus=job.threads).remote(job, events).future(): i for i, job in enumerate(jobs)}

        def get() -> list[dict]:
            try:
                batch = events.get_nowait_batch(events.qsize())
            except Exception:  # noqa: BLE001 - queue empty or closing
                batch = []
            if not batch:
                time.sleep(0.2)
            return batch
        with forwarding(get, on_event):
            return collect(futures, jobs, on_done, "Ray task")
    finally:
        if started:
            ray.shutdown()
