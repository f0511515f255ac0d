"""The capture service: named, detached Ray actors keep checkpoints loaded between prompt sets.

    spinal serve CONFIG --address auto          # start the replicas of every checkpoint in CONFIG
    spinal capture --service LABEL -p P -o S    # send a prompt set to LABEL's replicas
    spinal serve --status / --stop              # list them / stop them
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from spinal.cluster.actors import CaptureActor
from spinal.cluster.ray_capture import drive
from spinal.cluster.ray_cluster import connect, replica_gpus
from spinal.config import CaptureConfig, ClusterConfig, RunConfig
from spinal.errors import InputError

log = logging.getLogger(__name__)
NAMESPACE = "spinal"


def _name(label: str, i: int) -> str:
    return f"{label}/{i}"


@dataclass(frozen=True)
class Replica:
    name: str
    label: str
    model: str
    pid: int | None
    loads: int | None
    captures: int | None
    alive: bool


def _connect(address: str | None) -> None:
    connect(address or "auto")


def _named() -> list[str]:
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True) if a.get("namespace") == NAMESPACE)


def _handle(name: str):
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)


def serve(cfg: RunConfig, address: str | None = None, labels: list[str] | None = None) -> list[Replica]:
    """Start ``[cluster] replicas`` detached replicas per checkpoint (or only ``labels``); returns when all are loaded."""
    import ray

    _connect(address)
    cluster: ClusterConfig = cfg.cluster_config()
    existing = set(_named())
    gpus = replica_gpus(cluster)
    started = []
    for ck in cfg.checkpoints:
        if labels and ck.label not in labels:
            continue
        ccfg = cfg.capture_config(ck, out="-")
        for i in range(cluster.replicas):
            name = _name(ck.label, i)
            if name in existing:
                log.info("%s already serving", name)
                continue
            actor = ray.remote(CaptureActor).options(
                name=name, namespace=NAMESPACE, lifetime="detached", num_gpus=gpus,
                num_cpus=cluster.cpus_per_replica, max_restarts=0,
            ).remote(ccfg.__dict__, True)
            started.append(actor)
    ray.get([a.status.remote() for a in started])  # wait until every new replica has loaded its model
    return status(address)


def status(address: str | None = None) -> list[Replica]:
    import ray

    _connect(address)
    out = []
    for name in _named():
        label = name.rsplit("/", 1)[0]
        try:
            st = ray.get(_handle(name).status.remote(), timeout=30)
            out.append(Replica(name, label, st["model"], st["pid"], st["loads"], st["captures"], True))
        except Exception:  # a dead or unreachable replica still shows, marked
            out.append(Replica(name, label, "?", None, None, None, False))
    return out


def stop(address: str | None = None, labels: list[str] | None = None) -> list[str]:
    import ray

    _connect(address)
    stopped = []
    for name in _named():
        if labels and name.rsplit("/", 1)[0] not in labels:
            continue
        ray.kill(_handle(name))
        stopped.append(name)
    return stopped


def capture_with_service(cfg: CaptureConfig, label: str, address: str | None = None, max_retries: int = 2,
                         progress=None):
    """Run one capture on LABEL's loaded replicas (they stay up afterwards)."""
    _connect(address)
    names = [n for n in _named() if n.rsplit("/", 1)[0] == label]
    if not names:
        served = sorted({n.rsplit("/", 1)[0] for n in _named()}) or ["none"]
        raise InputError(f"no service named {label!r} on this Ray cluster (serving: {', '.join(served)}); "
                         "start it with `spinal serve CONFIG`")
    actors = [_handle(n) for n in names]
    return drive(cfg, actors, max_retries, progress)
