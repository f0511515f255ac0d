"""Capture on Ray: replica actors pull work units from the driver; a dead actor's unit is redone elsewhere."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from typing import Callable

from spinal.capture.load import check_local
from spinal.capture.runner import CaptureResult
from spinal.capture.session import check_location, check_writable
from spinal.cluster.actors import CaptureActor, user_error
from spinal.cluster.ray_cluster import replica_gpus
from spinal.config import CaptureConfig, ClusterConfig
from spinal.errors import InputError, StoreError, first_line
from spinal.store.lock import StoreLock, refuse_if_held
from spinal.store.location import remove_stray
from spinal.store.contract import Store

log = logging.getLogger(__name__)


def capture_on_ray(cfg: CaptureConfig, cluster: ClusterConfig, progress: Callable[[int, int], None] | None = None
                   ) -> CaptureResult:
    """Start ``cluster.replicas`` actors for this capture on the connected Ray cluster (the backend connected
    once, cluster/backends.py), drive it, and stop them."""
    import ray

    _check_out(cfg)
    _, snap = check_local(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                          revision=cfg.revision)
    gpus = replica_gpus(cluster)
    nodes_gpus = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    if gpus > 0 and gpus > nodes_gpus:
        raise InputError(f"gpus_per_replica={gpus:g}, but the largest node has {nodes_gpus:g} GPUs; "
                         "a replica cannot span nodes")
    Actor = ray.remote(CaptureActor).options(num_gpus=gpus, num_cpus=cluster.cpus_per_replica, max_restarts=0)
    # a replica's shard writes use the cores it reserves, not every core of its node (write_threads 0)
    actor_cfg = dataclasses.replace(cfg, write_threads=cfg.write_threads or max(1, int(cluster.cpus_per_replica)),
                                    revision=snap.commit if snap else cfg.revision)  # every replica the same commit
    actors = [Actor.remote(actor_cfg.__dict__) for _ in range(cluster.replicas)]
    try:
        return drive(cfg, actors, cluster.max_unit_retries, progress)
    finally:
        for a in actors:
            ray.kill(a)


def _check_out(cfg: CaptureConfig) -> None:
    check_location(cfg)
    check_writable(cfg.out)
    refuse_if_held(cfg.out)


def drive(cfg: CaptureConfig, actors: list, max_retries: int, progress=None) -> CaptureResult:
    """Hold the store's writer lock, bind actors to the store (the first creates or reopens it), then feed
    them units until all are done.

    Actors need ``prepare(create, cfg=None, lock_token=None) -> dict`` and ``run_unit(index) -> dict``;
    they may be fresh per capture or long-lived service replicas. They write under the driver's lock.
    """
    _check_out(cfg)
    with StoreLock(cfg.out) as lock:
        return _drive(cfg, actors, max_retries, progress, lock)


def _drive(cfg: CaptureConfig, actors: list, max_retries: int, progress, lock: StoreLock) -> CaptureResult:
    import ray

    t0 = time.perf_counter()
    first = _get(actors[0].prepare.remote(True, cfg.__dict__, lock.token))  # creates (or checks and reopens)
    live = [actors[0]]
    rest = {a.prepare.remote(False, cfg.__dict__, lock.token): a for a in actors[1:]}
    for ref, a in rest.items():
        try:
            _get(ref)
            live.append(a)
        except ray.exceptions.RayActorError as e:
            log.warning("a replica died while loading (%s); continuing with %d", e, len(live))
    n_started = len(actors)
    store = Store.open(cfg.out)
    remove_stray(cfg.out)  # temporary files of killed writers (the lock is ours)
    done = store.done()
    units = store.units
    todo = deque(u.index for u in units if not done[u.index])
    seq_len = store.read("sequences/length")
    total = int(seq_len.sum())
    finished = before = int(sum(seq_len[u.seq_start : u.seq_stop].sum() for u in units if done[u.index]))
    written, died = _dispatch(todo, live, max_retries, progress, finished, total)
    lock.check()
    store = Store.open(cfg.out, mode="r+")
    store.mark_complete()
    alive = len(live) - died
    if alive == n_started:
        log.info("capture on %d replica(s) done: %s", alive, first)
    else:
        log.warning("capture done on %d of %d replica(s): %d died while loading, %d during capture "
                    "(their units were redone on the others)", alive, n_started, n_started - len(live), died)
    return CaptureResult(cfg.out, written, len(units) - written, total, time.perf_counter() - t0,
                         store.meta.get("self_check"), total - before, store.meta.get("prompts", {}).get("source"))


def _get(ref):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        err = user_error(e)
        if err is not None:
            raise err from None
        raise


def _dispatch(todo: deque, actors: list, max_retries: int, progress, finished: int, total: int) -> tuple[int, int]:
    """Keep every live actor busy with one unit; requeue the unit of a dead actor; stop on a unit that keeps failing.

    Returns (units written, replicas that died)."""
    import ray

    idle = list(actors)
    inflight: dict = {}
    failures: dict[int, int] = {}
    written = died = 0
    if progress:
        progress(finished, total)
    while todo or inflight:
        while todo and idle:
            a = idle.pop()
            u = todo.popleft()
            inflight[a.run_unit.remote(u)] = (a, u)
        if not inflight:
            raise StoreError(f"every capture replica died; {len(todo)} unit(s) left: rerun with --resume")
        ready, _ = ray.wait(list(inflight), num_returns=1)
        ref = ready[0]
        a, u = inflight.pop(ref)
        try:
            meta = ray.get(ref)
        except ray.exceptions.RayActorError:
            log.warning("replica died during unit %d; the unit goes back in the queue", u)
            died += 1
            todo.appendleft(u)  # the dead actor is not returned to the idle pool
            continue
        except ray.exceptions.RayTaskError as e:
            failures[u] = failures.get(u, 0) + 1
            cause = user_error(e) or e
            if failures[u] > max_retries:
                raise StoreError(f"unit {u} failed {failures[u]} time(s); last error: "
                                 f"{first_line(cause)}") from None
            log.warning("unit %d failed (%s); retrying", u, first_line(cause))
            todo.append(u)
            idle.append(a)
            continue
        written += 1
        finished += meta["tokens"]
        if progress:
            progress(finished, total)
        idle.append(a)
    return written, died
