"""A training run's audit for any training loop (Monitor): the reference before training, the probe captured from
the live model at each save, the analysis in a background process, the newly audited steps handed back.

    monitor = Monitor(monitor_config("audit", "probe.jsonl"), tokenizer)
    monitor.begin(model)                       # before the first step: the reference, the worker
    ...  monitor.save(model, step)             # at each save: the capture only (the worker does the rest)
    ...  for row in monitor.collect(): ...     # whenever convenient: steps audited since the last call
    monitor.end()                              # after the last step: waits for the analysis, the final report

SpinalCallback (monitor/callback.py) is this engine driven by a transformers Trainer's events; a hand-written
loop (reference/series.py) calls it directly.
"""

from __future__ import annotations

import json
import logging
import time

from spinal.capture.live import capture_live, unwrap
from spinal.capture.runner import capture
from spinal.monitor.audit import audit_all, report_path
from spinal.monitor.checks import check_monitor
from spinal.monitor.config import MonitorConfig
from spinal.monitor.folder import AuditFolder, label
from spinal.monitor.worker import Worker
from spinal.store.location import store_exists
from spinal.store.lock import StoreLock

log = logging.getLogger("spinal.monitor")


def model_name(model) -> str:
    inner = unwrap(model)
    return getattr(inner.config, "_name_or_path", "") or type(inner).__name__


class Monitor:
    """The audit of one training run into ``cfg.out`` (see the module docstring); ``seed``: the run's, recorded."""

    def __init__(self, cfg: MonitorConfig, tokenizer, *, seed: int | None = None):
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.folder = AuditFolder(check_monitor(cfg))
        self.worker: Worker | None = None
        self.lock: StoreLock | None = None
        self.logged: set[int] = set()
        self.capture_seconds: dict[int, float] = {}
        self.flagged: list[int] = []

    def begin(self, model, step: int = 0) -> None:
        """Take the audit folder, capture the reference (once), start the background worker."""
        self.lock = StoreLock(str(self.folder.root)).acquire()
        try:
            inner = unwrap(model)
            self.folder.bind({"options": self.cfg.record(), "run": {"model": model_name(model), "seed": self.seed,
                                                                   "architecture": type(inner).__name__}})
            self.logged = {r["step"] for r in self.folder.read_series()}
            self._reference(model, step)
        except BaseException:
            self.lock.release()
            raise
        if self.cfg.background:
            self.worker = Worker(self.folder)
            self.worker.start()

    def _reference(self, model, step: int) -> None:
        if self.folder.complete(None):
            return
        out = self.folder.store(None)
        if self.cfg.reference:
            capture(self.cfg.capture_config(self.cfg.reference, out, resume=store_exists(out)))
            return
        if step:
            log.warning("SPINAL: training resumes at step %d with no reference captured: the model as it is now "
                        "is the reference", step)
        capture_live(self.cfg.capture_config(model_name(model), out, resume=store_exists(out)), model,
                     self.tokenizer, model_name(model), {"step": step, "reference": True, "seed": self.seed})

    def save(self, model, step: int, **training) -> float:
        """Capture the probe from the live model at training step ``step``; returns the seconds it took (0 for a
        step already captured). Without a background worker, the analysis runs here too."""
        if self.folder.complete(step) or step in self.logged:
            return 0.0
        out = self.folder.store(step)
        t0 = time.perf_counter()
        capture_live(self.cfg.capture_config(model_name(model), out, resume=store_exists(out)), model,
                     self.tokenizer, model_name(model), {"step": step, "seed": self.seed, **training})
        seconds = self.capture_seconds[step] = time.perf_counter() - t0
        with open(self.folder.root / "captures.jsonl", "a") as f:  # what each save cost the training loop
            f.write(json.dumps({"step": step, "seconds": round(seconds, 3)}) + "\n")
        log.info("SPINAL: captured %s in %.1f s", label(step), seconds)
        if not self.cfg.background:
            audit_all(self.folder, self.cfg)
        return seconds

    def collect(self) -> list[dict]:
        """The steps audited since the last call, each warned about once when flagged; a dead worker restarted."""
        if self.worker is not None and (warning := self.worker.check()):
            log.warning("SPINAL: %s", warning)
        new = [r for r in self.folder.read_series() if r["step"] not in self.logged]
        for row in new:
            self.logged.add(row["step"])
            if row["destabilized"]:
                self.flagged.append(row["step"])
                log.warning("SPINAL: the save at step %d is flagged destabilized: %s%s", row["step"], row["reason"],
                            "; stopping training (stop_on_flag)" if self.cfg.stop_on_flag else "")
        return new

    def end(self, wait: bool = True) -> list[dict]:
        """Training is over: let the worker finish (waiting for it unless ``wait`` is False), release the folder;
        returns the steps audited since the last ``collect``."""
        try:
            if self.worker is not None:
                if wait:
                    log.info("SPINAL: finishing the analysis of the last saves")
                if not self.worker.finish(None if wait else 0):
                    log.info("SPINAL: the analysis goes on in the background (pid %d); its report: %s",
                             self.worker.proc.pid, report_path(self.folder))
            rows = self.collect()
            log.info("SPINAL: audited %d saves; report %s", len(self.logged), report_path(self.folder))
            return rows
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
