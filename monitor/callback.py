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

from contextlib import contextmanager

from transformers import TrainerCallback

from spinal.errors import InputError
from spinal.monitor.audit import NUMBERS
from spinal.monitor.checks import check_trainer
from spinal.monitor.config import MonitorConfig, monitor_config
from spinal.monitor.session import Monitor

class SpinalCallback(TrainerCallback):
    """Audit ``trainer``'s run at every save into the folder ``out`` (see the module's docstring).

    ``prompts``: the probe (a file or dataset, as `spinal capture --prompts`); ``every``: audit every N steps
    instead of at each save; ``reference``: a checkpoint to compare with instead of the model before training;
    ``stop_on_flag``: stop at the first destabilized save; ``background=False``: analyze in this process (the
    trainer waits); ``capture``/``analyze``/``compare``: dicts of those stages' options; ``config``: a whole
    MonitorConfig instead of all these; ``wait_at_end=False``: leave the last analyses running after training.
    Every input is checked here, before training starts. The engine is ``self.monitor`` (monitor/session.py)."""

    def __init__(self, trainer, prompts: str | None = None, out: str | None = None, *,
                 config: MonitorConfig | None = None, tokenizer=None, wait_at_end: bool = True, **options):
        if config is None:
            if prompts is None or out is None:
                raise InputError("SpinalCallback needs prompts= (the probe) and out= (the audit folder), or config=")
            config = monitor_config(out, prompts, **options)
        elif prompts or out or options:
            raise InputError("SpinalCallback: give config= or the options (prompts=, out=, …), not both")
        check_trainer(trainer, config)
        self.monitor = Monitor(config, tokenizer, seed=trainer.args.seed)
        self.trainer, self.wait_at_end = trainer, wait_at_end
        trainer.add_callback(self)

    @property
    def flagged(self) -> list[int]:
        return self.monitor.flagged

    @property
    def worker(self):
        return self.monitor.worker

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        m = self.monitor
        m.tokenizer = m.tokenizer or getattr(processing_class, "tokenizer", processing_class)
        m.begin(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self.monitor.lock is None:
            return
        if self.monitor.cfg.every and state.global_step % self.monitor.cfg.every == 0:
            self.monitor.save(model, state.global_step, epoch=state.epoch)
        self._log(self.monitor.collect(), state, control)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.monitor.lock is not None and not self.monitor.cfg.every:
            self.monitor.save(model, state.global_step, epoch=state.epoch)
            self._log(self.monitor.collect(), state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.monitor.lock is not None:
            self._log(self.monitor.end(self.wait_at_end), state, control)

    def _log(self, rows: list[dict], state, control) -> None:
        """Each newly audited step's numbers through the trainer (to whatever ``report_to`` names), at the step of
        its save; with ``stop_on_flag``, a flagged step stops training."""
        for row in rows:
            metrics = {f"spinal/{k}": float(row[k]) for k in NUMBERS if row.get(k) is not None}
            with _at_step(state, row["step"]):
                self.trainer.log(metrics)
            if row["destabilized"] and self.monitor.cfg.stop_on_flag:
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
