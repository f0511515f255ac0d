"""Ray actors for capture (one per model replica) and Ray tasks for analysis; only small metadata crosses Ray."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from spinal.config import CaptureConfig
from spinal.errors import InputError, SpinalError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how wide a run executes."""

    address: str | None = dataclasses.field(
        default=None, metadata={"help": "Ray address: None = in-process (1 replica) or a local Ray instance; "
                                        "'auto' joins the running cluster"})
    replicas: int = dataclasses.field(default=1, metadata={"help": "model replicas (capture actors)"})
    gpus_per_replica: int = dataclasses.field(
        default=-1, metadata={"help": "GPUs per replica actor (-1: 1 if the cluster has GPUs, else 0)"})
    cpus_per_replica: int = dataclasses.field(default=1, metadata={"help": "CPUs reserved per replica actor"})
    max_unit_retries: int = dataclasses.field(
        default=2, metadata={"help": "retries of a unit that raised an error before the run stops"})
    analysis_workers: int = dataclasses.field(
        default=0, metadata={"help": "concurrent analysis tasks (0: as many as the cluster has CPUs)"})

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InputError(f"[cluster] replicas={self.replicas}; must be ≥ 1")
        if self.max_unit_retries < 0:
            raise InputError(f"[cluster] max_unit_retries={self.max_unit_retries}; must be ≥ 0")

    @property
    def uses_ray(self) -> bool:
        return self.address is not None or self.replicas > 1


class CaptureActor:
    """Holds one loaded replica; ``prepare`` binds it to a store, ``run_unit`` captures and writes one unit.

    Built with a capture config it loads that model on first ``prepare``; a service replica
    (``load_now=True``) loads at start and serves any number of prompt sets for the same model.
    """

    def __init__(self, cfg: dict, load_now: bool = False):
        self.cfg = CaptureConfig(**cfg)
        self.session = None
        self.loaded = None
        self.loads = 0
        self.captures = 0
        if load_now:
            self._load()

    def _load(self):
        from spinal.capture.load import load

        c = self.cfg
        self.loaded = load(c.model, dtype=c.dtype, device_map=c.device_map, max_memory=c.max_memory,
                           trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle,
                           allow_offload=c.allow_offload)
        self.loads += 1
        return self.loaded

    def prepare(self, create: bool, cfg: dict | None = None, lock_token: str | None = None) -> dict:
        """Bind to the store under the driver's writer lock (``lock_token``): the first replica creates or
        reopens it, the others reopen it."""
        from spinal.capture.runner import prepare

        cfg = CaptureConfig(**cfg) if cfg else self.cfg
        if cfg.model != self.cfg.model:
            raise SpinalError(f"this replica serves {self.cfg.model}, not {cfg.model}")
        if not create:
            cfg = dataclasses.replace(cfg, resume=True, overwrite=False, self_check=False)
        self.session = prepare(cfg, loaded=self.loaded or self._load(), lock_token=lock_token)
        self.captures += 1
        return {"pid": os.getpid(), "n_units": self.session.store.meta["n_units"]}

    def status(self) -> dict:
        return {"pid": os.getpid(), "model": self.cfg.model, "loads": self.loads, "captures": self.captures}

    def run_unit(self, index: int) -> dict:
        meta = self.session.run_unit(index)
        meta["pid"] = os.getpid()
        return meta

    def ping(self) -> int:
        return os.getpid()


def user_error(e: BaseException) -> SpinalError | None:
    """The SpinalError inside a Ray task error, if that is what failed."""
    cause = getattr(e, "cause", None)
    while cause is not None and not isinstance(cause, SpinalError):
        cause = getattr(cause, "cause", None) or getattr(cause, "__cause__", None)
    return cause if isinstance(cause, SpinalError) else None
