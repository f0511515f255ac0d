"""Joining a Ray cluster once, and reading what it offers: GPUs per replica, a free CPU for analysis."""

from __future__ import annotations

import time

from spinal.config import ClusterConfig
from spinal.errors import InputError, first_line


def connect(address: str | None) -> None:
    """Join ``address`` ('auto' or host:port) or start a local Ray instance; a clear error if unreachable."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto" and not address.startswith("ray://"):
        _reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local instance"
        hint = auth_hint() if address else ""
        raise InputError(f"cannot reach Ray at {where}: {first_line(e)}; "
                         + (hint or "start it with `ray start --head` or drop --address")) from None


def auth_hint() -> str:
    """Why joining a running cluster may fail although it listens: token authentication (on by default in
    `ray start` since Ray 2.59) with no token on this machine, or another one than the head's. '' when the
    environment says authentication is off."""
    import os
    from pathlib import Path

    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return ""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return ("the cluster may use token authentication and reject this machine's token (RAY_AUTH_TOKEN / "
                "RAY_AUTH_TOKEN_PATH): use the head node's (`ray get-auth-token` there)")
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file():
        return (f"the cluster may use token authentication and reject this machine's token ({token}): copy the "
                "head node's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN to it")
    return (f"`ray start` turns on token authentication (Ray ≥ 2.59) and this machine has no token ({token} is "
            "missing): copy the head node's ~/.ray/auth_token here or set RAY_AUTH_TOKEN to it, or start every node "
            "with RAY_AUTH_MODE=disabled")


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at HOST:PORT (ray.init would retry for ~2 minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"cannot reach Ray at {address} ({e.strerror or e}); start it with `ray start --head` "
                         "or check the address") from None


def replica_gpus(cluster: ClusterConfig) -> float:
    """GPUs each replica actor asks for: the configured number, or 1 when the cluster has GPUs (-1)."""
    import ray

    if cluster.gpus_per_replica >= 0:
        return float(cluster.gpus_per_replica)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def wait_for_a_free_cpu(patience_s: float = 15.0) -> None:
    """Analysis tasks need one CPU each: refuse (instead of waiting forever) a cluster whose CPUs are all held,
    e.g. by serving replicas. Actors just stopped free theirs within seconds, hence the patience."""
    import ray

    deadline = time.monotonic() + patience_s
    while ray.available_resources().get("CPU", 0) < 1:
        if time.monotonic() > deadline:
            total = ray.cluster_resources().get("CPU", 0)
            raise InputError(f"analysis needs at least 1 free CPU on the Ray cluster, but all {total:g} are held "
                             "(serving replicas hold theirs: see `spinal serve --status`); stop one with "
                             "`spinal serve --stop --only LABEL`, or add CPUs (`ray start --num-cpus N`)")
        time.sleep(0.5)
