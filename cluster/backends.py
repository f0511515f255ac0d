"""Where a run's work executes: in this process, on fresh Ray replicas, or on a running service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from spinal.capture.runner import CaptureResult
from spinal.config import CaptureConfig, ClusterConfig
from spinal.errors import SpinalError, first_line

CaptureProgress = Callable[[int, int], None]  # (tokens done, total)


class Backend(Protocol):
    """Offers capture of one store and a map of analysis tasks (``None``: analyze's own process pool)."""

    submit: Callable | None

    def capture(self, cfg: CaptureConfig, progress: CaptureProgress | None) -> CaptureResult: ...


@dataclass
class InProcess:
    """Capture in this process; analysis on the local process pool."""

    submit: Callable | None = None

    def capture(self, cfg: CaptureConfig, progress: CaptureProgress | None) -> CaptureResult:
        from spinal.capture import capture

        return capture(cfg, progress=progress)


@dataclass
class OnRay:
    """Capture on ``cluster.replicas`` fresh actors per store; analysis as Ray CPU tasks. Connects once."""

    cluster: ClusterConfig

    def __post_init__(self) -> None:
        from spinal.cluster.ray_cluster import connect

        connect(self.cluster.address)

    def capture(self, cfg: CaptureConfig, progress: CaptureProgress | None) -> CaptureResult:
        from spinal.cluster.ray_capture import capture_on_ray

        return capture_on_ray(cfg, self.cluster, progress)

    def submit(self, tasks, workers: int, progress) -> list:
        return ray_map(tasks, progress, limit=self.cluster.analysis_workers)


@dataclass
class OnService(OnRay):
    """Capture on the replicas `spinal serve` started for each checkpoint (by label); they stay up."""

    labels: dict[str, str] = field(default_factory=dict)  # checkpoint path -> label

    def __post_init__(self) -> None:
        from spinal.cluster.ray_cluster import connect

        connect(self.cluster.address or "auto")

    def capture(self, cfg: CaptureConfig, progress: CaptureProgress | None) -> CaptureResult:
        from spinal.cluster.service import capture_with_service

        return capture_with_service(cfg, self.labels[cfg.model], self.cluster.address,
                                    self.cluster.max_unit_retries, progress)


def backend_for(cluster: ClusterConfig, service_labels: dict[str, str] | None = None) -> Backend:
    """In-process for one replica and no address, else Ray; ``service_labels`` selects the serving replicas."""
    if service_labels is not None:
        return OnService(cluster, service_labels)
    return OnRay(cluster) if cluster.uses_ray else InProcess()


def ray_map(tasks, progress, limit: int = 0) -> list:
    """Analysis fan-out as Ray CPU tasks (one per layer spectrum or lens unit range), at most ``limit`` in
    flight (0: all at once, Ray queues them on free CPUs); results in task order."""
    import ray

    from spinal.analyze.pool import call
    from spinal.cluster.actors import user_error
    from spinal.cluster.ray_cluster import wait_for_a_free_cpu

    wait_for_a_free_cpu()
    remote = ray.remote(num_cpus=1, max_retries=2)(call)
    queue = list(enumerate(tasks))[::-1]
    index: dict = {}
    out = [None] * len(tasks)
    pending: list = []
    if progress:
        progress(0, len(tasks))
    while queue or pending:
        while queue and (not limit or len(pending) < limit):
            i, t = queue.pop()
            ref = remote.remote(t)
            index[ref] = i
            pending.append(ref)
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            out[index[ready[0]]] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            err = user_error(e)
            if err is not None:
                raise err from None
            raise SpinalError(f"analysis task failed: {first_line(e)}") from None
        if progress:
            progress(len(tasks) - len(queue) - len(pending), len(tasks))
    return out
