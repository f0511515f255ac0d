"""Ray actors for capture (one per model replica) and Ray tasks for analysis; only small metadata crosses Ray."""

from __future__ import annotations

import dataclasses
import logging
import os

from spinal.config import CaptureConfig
from spinal.errors import SpinalError

log = logging.getLogger(__name__)


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
        from spinal.capture.load import load_for

        self.loaded = load_for(self.cfg)
        self.loads += 1
        return self.loaded

    def prepare(self, create: bool, cfg: dict | None = None, lock_token: str | None = None) -> dict:
        """Bind to the store under the driver's writer lock (``lock_token``): the first replica creates or
        reopens it, the others reopen it."""
        from spinal.capture.session import prepare

        cfg = CaptureConfig(**cfg) if cfg else self.cfg
        if (cfg.model, cfg.adapter) != (self.cfg.model, self.cfg.adapter):
            served = self.cfg.model + (f" + adapter {self.cfg.adapter}" if self.cfg.adapter else "")
            raise SpinalError(f"this replica serves {served}, not {cfg.model}"
                              + (f" + adapter {cfg.adapter}" if cfg.adapter else ""))
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


def user_error(e: BaseException) -> SpinalError | None:
    """The SpinalError inside a Ray task error, if that is what failed."""
    cause = getattr(e, "cause", None)
    while cause is not None and not isinstance(cause, SpinalError):
        cause = getattr(cause, "cause", None) or getattr(cause, "__cause__", None)
    return cause if isinstance(cause, SpinalError) else None
