"""SpinalCallback on a real Trainer: the run trains to the same weights bit for bit, the numbers reach TensorBoard,
MLflow and W&B at the step of the save they belong to, a killed analysis worker is restarted with no save lost,
the live audit equals `spinal watch` of the saved checkpoints, and a broken run is flagged (and stopped)."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback
from typer.testing import CliRunner

from spinal.cli.app import app
from spinal.monitor import SpinalCallback
from trainers import FAST, FAST_SETS, LrJump, probe, trainer, wandb_history, weights

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
SAVES = [2, 4, 6]


class KillWorker(TrainerCallback):
    """SIGKILL the monitor's background worker right after the first save (the fault the monitor must survive)."""

    def __init__(self, monitor: SpinalCallback):
        self.monitor, self.killed = monitor, None

    def on_save(self, args, state, control, **kwargs):
        if self.killed is None:
            self.killed = self.monitor.worker.proc.pid
            os.kill(self.killed, signal.SIGKILL)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """The same seeded run twice, in bf16 mixed precision: without the callback, and with it, reporting to
    TensorBoard, MLflow (its local SQLite store) and W&B offline, its analysis worker killed after the first save."""
    base = tmp_path_factory.mktemp("audited")
    plain = trainer(base / "plain", bf16=True)  # mixed precision, as DPO runs usually train
    plain.train()
    records = Records()
    logging.getLogger("spinal.monitor").addHandler(records)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")  # MLflow 3's local store
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(base))
        mp.setenv("WANDB_SILENT", "true")
        t = trainer(base / "mon", report_to=["tensorboard", "mlflow", "wandb"], bf16=True)
        cb = SpinalCallback(t, prompts=str(probe(base / "probe.jsonl")), out=str(base / "audit"), **FAST)
        killer = KillWorker(cb)
        t.add_callback(killer)
        t.train()
        import mlflow
        import wandb

        wandb.finish()  # what a training script ends with: the offline run is written out
        mlflow.end_run()  # while its store's URI is set (else MLflowCallback.__del__ fails at exit)
    logging.getLogger("spinal.monitor").removeHandler(records)
    series = [json.loads(l) for l in (base / "audit" / "series.jsonl").read_text().splitlines()]
    return SimpleNamespace(base=base, plain=weights(plain), audited=weights(t), trainer=t, cb=cb, series=series,
                           killed=killer.killed, log=records.lines)


def test_a_run_with_the_callback_trains_to_the_same_weights_bit_for_bit(audited):
    assert audited.plain.keys() == audited.audited.keys()
    different = [k for k in audited.plain if not torch.equal(audited.plain[k], audited.audited[k])]
    assert not different, different
    assert audited.trainer.model.training  # handed back in train mode
    assert [r["step"] for r in audited.series] == SAVES


def test_the_numbers_reach_tensorboard_and_mlflow_at_the_save_they_belong_to(audited):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    want = {r["step"]: r["terminal_delta_a"] for r in audited.series}
    events = [EventAccumulator(str(p.parent)).Reload() for p in (audited.base / "mon" / "run").rglob("events.*")]
    tb = {e.step: e.value for acc in events if "train/spinal/terminal_delta_a" in acc.Tags()["scalars"]
          for e in acc.Scalars("train/spinal/terminal_delta_a")}
    assert tb.keys() == want.keys()
    assert all(tb[s] == pytest.approx(want[s], rel=1e-6) for s in want)
    client = MlflowClient(tracking_uri=f"sqlite:///{audited.base / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    history = [m for r in runs for m in client.get_metric_history(r.info.run_id, "spinal/terminal_delta_a")]
    assert {m.step: m.value for m in history} == pytest.approx(want)
    flags = [m for r in runs for m in client.get_metric_history(r.info.run_id, "spinal/destabilized")]
    assert sorted(m.step for m in flags) == SAVES and not any(m.value for m in flags)


def test_the_numbers_reach_wandb_offline_at_the_save_they_belong_to(audited):
    runs = list(audited.base.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    rows = [r for r in wandb_history(runs[0]) if "train/spinal/terminal_delta_a" in r]
    got = {r["train/global_step"]: r["train/spinal/terminal_delta_a"] for r in rows}
    assert got == pytest.approx({r["step"]: r["terminal_delta_a"] for r in audited.series})


def test_a_killed_analysis_worker_is_restarted_and_no_save_is_lost(audited):
    assert audited.killed is not None
    assert any("background analysis died (signal SIGKILL); restarted it" in l for l in audited.log), audited.log
    assert [r["step"] for r in audited.series] == SAVES
    assert len({r["step"] for r in audited.series}) == len(audited.series)
    assert (audited.base / "audit" / "report" / "report.html").is_file()


def test_spinal_watch_of_the_saved_checkpoints_equals_the_live_audit(audited, tmp_path):
    """The live model captured in the trainer's process and the same step's checkpoint read from disk give the
    same series, number for number (float32 weights, same forward pass). Under mixed precision accelerate wraps
    the model's forward in autocast; the capture runs the original forward, so the live model reads as its saved
    checkpoint does (without that the self-check refused: lens 0.3 % off the autocast logits)."""
    model = audited.trainer.model
    assert "forward" in model.__dict__ and hasattr(model, "_original_forward")  # the autocast wrapper is there
    r = CliRunner().invoke(app, ["watch", str(audited.base / "mon" / "run"), "--out", str(tmp_path / "w"),
                                 "--prompts", str(audited.base / "probe.jsonl"), "--reference",
                                 str(audited.base / "mon" / "init"), "--once", "--no-progress", *FAST_SETS])
    assert r.exit_code == 0, r.output
    watched = [json.loads(l) for l in (tmp_path / "w" / "series.jsonl").read_text().splitlines()]
    assert watched == audited.series


def test_a_broken_run_is_flagged_at_its_first_broken_save_and_stopped(tmp_path, caplog):
    """Four healthy saves at a constant rate, then the rate ×100: the first save after the jump is flagged, none
    before, and with stop_on_flag training ends there, at step 10 of 16. The offline audit of the saved
    checkpoints (`spinal watch --once`, read from disk) flags the same saves."""
    t = trainer(tmp_path, steps=16, lr=1e-3)
    t.add_callback(LrJump(at=8, factor=100.0))
    cb = SpinalCallback(t, prompts=str(probe(tmp_path / "probe.jsonl")), out=str(tmp_path / "audit"),
                        stop_on_flag=True, background=False, **FAST)
    with caplog.at_level(logging.WARNING, logger="spinal.monitor"):
        t.train()
    series = [json.loads(l) for l in (tmp_path / "audit" / "series.jsonl").read_text().splitlines()]
    assert [(r["step"], r["destabilized"]) for r in series] == [(2, 0), (4, 0), (6, 0), (8, 0), (10, 1)]
    assert t.state.global_step == 10
    assert cb.flagged == [10]
    warning = [r.getMessage() for r in caplog.records if "flagged destabilized" in r.getMessage()]
    assert len(warning) == 1 and "step 10" in warning[0] and "typical healthy step" in warning[0]
    r = CliRunner().invoke(app, ["watch", str(tmp_path / "run"), "--out", str(tmp_path / "offline"), "--prompts",
                                 str(tmp_path / "probe.jsonl"), "--reference", str(tmp_path / "init"), "--once",
                                 "--no-progress", *FAST_SETS])
    assert r.exit_code == 0, r.output
    offline = [json.loads(l) for l in (tmp_path / "offline" / "series.jsonl").read_text().splitlines()]
    assert [(r["step"], r["destabilized"]) for r in offline] == [(r["step"], r["destabilized"]) for r in series]

