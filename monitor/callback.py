"""SpinalCallback: audit a transformers/TRL training run while it trains, from the live model, at every save.

    from spinal.monitor import SpinalCallback
    SpinalCallback(trainer, prompts="probe.jsonl", out="audit")     # attaches itself; then trainer.train()

At the start of training it captures the probe from the model as it is (the reference, unless ``reference``
names a checkpoint); at each save (or every N steps) it captures the probe again from the live model (no reload,
no copy, the model handed back exactly as it was: capture/live.py), and a background process traces the step,
extends the series and applies the destabilization rule against the run's own history (monitor/worker.py). The
numbers come back through the trainer's own logging (TensorBoard, MLflow, W&B: whatever ``report_to`` names), each
at the step of the save it belongs to; a flagged save logs one warning and, with ``stop_on_flag``, stops training.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from transformers import TrainerCallback

from spinal.capture.live import capture_live, unwrap
from spinal.capture.runner import capture
from spinal.errors import InputError
from spinal.monitor.audit import NUMBERS, audit_all, report_path
from spinal.monitor.checks import check_monitor, check_trainer
from spinal.monitor.config import MonitorConfig, monitor_config
from spinal.monitor.folder import AuditFolder, label
from spinal.monitor.worker import Worker
from spinal.store.location import store_exists
from spinal.store.lock import StoreLock

log = logging.getLogger("spinal.monitor")


class SpinalCallback(TrainerCallback):
    """Audit ``trainer``'s run at every save into the folder ``out`` (see the module's docstring).

    ``prompts``: the probe (a file or dataset, as `spinal capture --prompts`); ``every``: audit every N steps
    instead of at each save; ``reference``: a checkpoint to compare with instead of the model before training;
    ``stop_on_flag``: stop at the first destabilized save; ``background=False``: analyze in this process (the
    trainer waits); ``capture``/``analyze``/``compare``: dicts of those stages' options; ``config``: a whole
    MonitorConfig instead of all these. Every input is checked here, before training starts."""

    def __init__(self, trainer, prompts: str | None = None, out: str | None = None, *,
                 config: MonitorConfig | None = None, tokenizer=None, wait_at_end: bool = True, **options):
        if config is None:
            if prompts is None or out is None:
                raise InputError("SpinalCallback needs prompts= (the probe) and out= (the audit folder), or config=")
            config = monitor_config(out, prompts, **options)
        elif prompts or out or options:
            raise InputError("SpinalCallback: give config= or the options (prompts=, out=, …), not both")
        check_trainer(trainer, config)
        self.cfg = config
        self.folder = AuditFolder(check_monitor(config))
        self.trainer, self.tokenizer, self.wait_at_end = trainer, tokenizer, wait_at_end
        self.worker: Worker | None = None
        self.lock: StoreLock | None = None
        self.logged: set[int] = set()
        self.capture_seconds: list[float] = []
        self.flagged: list[int] = []
        trainer.add_callback(self)

    # --- the trainer's events -------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.tokenizer = self.tokenizer or getattr(processing_class, "tokenizer", processing_class)
        self.lock = StoreLock(str(self.folder.root)).acquire()
        self.folder.bind({"options": self.cfg.record(), "run": self._identity(args, model)})
        self.logged = {r["step"] for r in self.folder.read_series()}
        self._reference(state, model)
        if self.cfg.background:
            self.worker = Worker(self.folder)
            self.worker.start()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.cfg.every and state.global_step % self.cfg.every == 0:
            self._audit(state, model)
        self._collect(state, control)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and not self.cfg.every:
            self._audit(state, model)
            self._collect(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.lock is None:
            return
        try:
            if self.worker is not None:
                if self.wait_at_end:
                    log.info("SPINAL: finishing the analysis of the last saves")
                if not self.worker.finish(None if self.wait_at_end else 0):
                    log.info("SPINAL: the analysis goes on in the background (pid %d); its report: %s",
                             self.worker.proc.pid, report_path(self.folder))
            self._collect(state, control)
            log.info("SPINAL: audited %d saves; report %s", len(self.logged), report_path(self.folder))
        finally:
            self.lock.release()
            self.lock = None

    # --- what it does -----------------------------------------------------------------------------------------
    def _identity(self, args, model) -> dict:
        inner = unwrap(model)
        return {"model": getattr(inner.config, "_name_or_path", "") or type(inner).__name__,
                "architecture": type(inner).__name__, "seed": args.seed}

    def _name(self, model) -> str:
        return getattr(unwrap(model).config, "_name_or_path", "") or type(unwrap(model)).__name__

    def _reference(self, state, model) -> None:
        """Capture the reference once: the named checkpoint, or the model as training starts."""
        if self.folder.complete(None):
            return
        out = self.folder.store(None)
        if self.cfg.reference:
            capture(self.cfg.capture_config(self.cfg.reference, out, resume=store_exists(out)))
            return
        if state.global_step:
            log.warning("SPINAL: training resumes at step %d with no reference captured: the model as it is now "
                        "is the reference", state.global_step)
        capture_live(self.cfg.capture_config(self._name(model), out, resume=store_exists(out)), model,
                     self.tokenizer, self._name(model), {"step": state.global_step, "reference": True,
                                                         "seed": self.trainer.args.seed})

    def _audit(self, state, model) -> None:
        step = state.global_step
        if self.folder.complete(step) or step in self.logged:
            return
        out = self.folder.store(step)
        t0 = time.perf_counter()
        capture_live(self.cfg.capture_config(self._name(model), out, resume=store_exists(out)), model,
                     self.tokenizer, self._name(model), {"step": step, "epoch": state.epoch,
                                                         "seed": self.trainer.args.seed})
        seconds = time.perf_counter() - t0
        self.capture_seconds.append(seconds)
        log.info("SPINAL: captured %s in %.1f s", label(step), seconds)
        if not self.cfg.background:
            audit_all(self.folder, self.cfg)

    def _collect(self, state, control) -> None:
        """Log every newly audited step through the trainer, at its own step; warn (and stop) on a flag."""
        if self.worker is not None and (warning := self.worker.check()):
            log.warning("SPINAL: %s", warning)
        for row in self.folder.read_series():
            if row["step"] in self.logged:
                continue
            self.logged.add(row["step"])
            metrics = {f"spinal/{k}": float(row[k]) for k in NUMBERS if row.get(k) is not None}
            with _at_step(state, row["step"]):
                self.trainer.log(metrics)
            if row["destabilized"]:
                self.flagged.append(row["step"])
                log.warning("SPINAL: the save at step %d is flagged destabilized: %s%s", row["step"], row["reason"],
                            "; stopping training (stop_on_flag)" if self.cfg.stop_on_flag else "")
                if self.cfg.stop_on_flag:
                    control.should_training_stop = True


@contextmanager
def _at_step(state, step: int):
    """The trainer's state at ``step`` while its loggers write a value that belongs there (trackers take the
    step from ``state.global_step``); the true step restored after."""
    now = state.global_step
    state.global_step = step
    try:
        yield
    finally:
        state.global_step = now
