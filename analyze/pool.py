"""Analysis tasks run in this process or on a local spawn-based process pool, one BLAS thread per worker."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from typing import Any, Callable

Task = tuple[Callable[..., Any], dict]  # (function, keyword arguments): picklable, so any backend can run it
Progress = Callable[[int, int], None]  # (tasks done, total)


def call(task: Task) -> Any:
    """Run one task; the unit of work every backend (this pool, Ray) maps."""
    fn, kw = task
    return fn(**kw)


def run_tasks(tasks: list[Task], workers: int, progress: Progress | None = None) -> list:
    """Results in task order: in-process for one worker or one task, else a spawn-based process pool (no fork
    after torch/zarr threads have started)."""
    out: list = [None] * len(tasks)
    if progress:
        progress(0, len(tasks))
    if workers <= 1 or len(tasks) == 1:
        for i, t in enumerate(tasks):
            out[i] = call(t)
            if progress:
                progress(i + 1, len(tasks))
        return out
    ex = cf.ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("spawn"),
                                initializer=_one_thread)
    try:
        futs = {ex.submit(call, t): i for i, t in enumerate(tasks)}
        for k, f in enumerate(cf.as_completed(futs), 1):
            out[futs[f]] = f.result()
            if progress:
                progress(k, len(tasks))
    except BaseException:  # Ctrl-C or a failed task: stop the other workers now, not after their tasks
        stop_now(ex)
        raise
    ex.shutdown()
    return out


def stop_now(ex: cf.ProcessPoolExecutor) -> None:
    """End a process pool's workers at once (their running tasks too) and drop the queued ones."""
    for proc in list((ex._processes or {}).values()):
        proc.terminate()
    ex.shutdown(wait=False, cancel_futures=True)


def _one_thread() -> None:
    """One BLAS/OpenMP and one torch thread per worker: the pool is the parallelism (threads × processes
    would oversubscribe the cores). threadpoolctl limits BLAS after import, so the parent's environment
    is never changed."""
    import torch
    from threadpoolctl import threadpool_limits

    _die_with_parent()
    threadpool_limits(1)
    torch.set_num_threads(1)


def _die_with_parent() -> None:
    """A worker ends when the process that started it does (killed, not only interrupted): Linux's parent-death
    signal; elsewhere a pool whose parent is killed outright still leaves its workers to finish their tasks."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
