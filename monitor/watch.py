"""`spinal watch RUN_DIR`: audit a training run's ``checkpoint-N`` folders as they appear, from any trainer.

Each complete checkpoint (its ``trainer_state.json`` is there: the Trainer writes it last) is captured, traced
and added to the series in step order, with the same rule and report as the callback (monitor/audit.py). A full
model folder is captured as it is; a PEFT adapter folder is merged into its base (``base``, else the adapter's own
``base_model_name_or_path``). Killed at any moment and started again, it goes on with the step it was on: a store
half written is finished (capture resume), a trace is written whole or not at all, and a step already in
series.jsonl is never audited again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from spinal.capture.runner import capture
from spinal.errors import InputError
from spinal.monitor.audit import audit_round, refresh_report, report_path
from spinal.monitor.checks import check_monitor
from spinal.monitor.config import MonitorConfig
from spinal.monitor.folder import AuditFolder, label
from spinal.store.location import store_exists
from spinal.outputs import write_text_atomic
from spinal.store.lock import StoreLock

log = logging.getLogger("spinal.monitor")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "n_embd", "n_layer")


@dataclass
class WatchSummary:
    audited: list[int] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's complete checkpoint folders, (step, folder) in step order."""
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name))]
    return sorted((s, p) for s, p in found if (p / TRAINER_STATE).is_file())


def _model_of(folder: Path, base: str | None) -> tuple[str, str | None]:
    """(model, adapter) to capture a checkpoint folder: itself, or its adapter merged into the base."""
    if not (folder / "adapter_config.json").is_file():
        return str(folder), None
    try:
        named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except ValueError:
        raise InputError(f"{folder / 'adapter_config.json'} cannot be read") from None
    if not (base or named):
        raise InputError(f"{folder} is an adapter with no base_model_name_or_path; give the base with --base")
    return (base or named), str(folder)


def _shape(model: str) -> dict:
    """The keys of a checkpoint's config.json that a checkpoint of the same run shares (empty: none found)."""
    f = Path(model) / "config.json"
    if not f.is_file():
        return {}
    cfg = json.loads(f.read_text())
    cfg = cfg.get("text_config", cfg)
    return {k: cfg[k] for k in SHAPE_KEYS if k in cfg}


def check_same_run(reference: str, model: str, where: Path) -> None:
    """Refuse, in one line, a checkpoint whose architecture is not the reference's (another base)."""
    a, b = _shape(reference), _shape(model)
    diff = [f"{k} {a[k]} vs {b[k]}" for k in a if k in b and a[k] != b[k]]
    if diff:
        raise InputError(f"{where} is not a checkpoint of the reference's model ({'; '.join(diff)}): another base? "
                         "watch one run's folder, or give its own --reference")


def watch(cfg: MonitorConfig, run_dir: str, *, once: bool = False, progress: Callable | None = None,
          stop: Callable[[], bool] | None = None) -> WatchSummary:
    """Audit ``run_dir``'s checkpoints into ``cfg.out`` until ``stop()`` (or, with ``once``, what is there now)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{run_dir} is not a folder; give a training output folder (the one holding checkpoint-N)")
    folder = AuditFolder(check_monitor(cfg))
    found = checkpoints(run)
    if once and not found and not cfg.reference and not (folder.root / "reference.json").exists():
        raise InputError(f"{run_dir} holds no complete checkpoint-N folder (with {TRAINER_STATE}); is it the "
                         "trainer's output_dir?")
    summary = WatchSummary()
    with StoreLock(str(folder.root)):
        folder.bind({"options": cfg.record(), "run": {"run_dir": str(run.resolve())}})
        done = {r["step"] for r in folder.read_series()}
        while not (cfg.reference or found or folder.complete(None)):  # the first checkpoint will be the reference
            if stop is not None and stop():
                return summary
            time.sleep(cfg.poll)
            found = checkpoints(run)
        reference, ref_step = _reference(cfg, folder, found)
        drawn = 0  # audited steps the report shows
        while True:
            for step, path in checkpoints(run):
                if step in done or step == ref_step:
                    continue
                model, adapter = _model_of(path, cfg.base)
                check_same_run(reference, model, path)
                out = folder.store(step)
                if not folder.complete(step):
                    log.info("capturing %s (%s)", label(step), path)
                    capture(cfg.capture_config(model, out, adapter=adapter, resume=store_exists(out)), progress)
                for row in audit_round(folder, cfg):
                    done.add(row["step"])
                    summary.audited.append(row["step"])
                    summary.rows.append(row)
                    log.info("audited %s: terminal Δa %+.4g, ΔL %+.4g, path length %.4g%s", row["label"],
                             row["terminal_delta_a"], row["terminal_delta_L"], row["path_length"],
                             "" if row["destabilized"] else ", not flagged")
                    if row["destabilized"]:
                        summary.flagged.append(row["step"])
                        log.warning("the checkpoint at step %d is flagged destabilized: %s", row["step"],
                                    row["reason"])
            missing = not report_path(folder).exists() and folder.read_series()  # killed before drawing it
            if drawn < len(summary.audited) or missing:
                refresh_report(folder)  # once the backlog is audited, not after each of its checkpoints
                drawn = len(summary.audited)
            if once or (stop is not None and stop()):
                return summary
            time.sleep(cfg.poll)


def _reference(cfg: MonitorConfig, folder: AuditFolder, found: list[tuple[int, Path]]) -> tuple[str, int | None]:
    """Capture the reference once: the one named, else the first checkpoint (recorded in reference.json, so a
    restart keeps it after the trainer has rotated that checkpoint away). Returns its model and training step."""
    f = folder.root / "reference.json"
    if f.exists():
        ref = json.loads(f.read_text())
    elif cfg.reference:
        ref = {"model": cfg.reference, "adapter": None, "step": None}
    else:
        model, adapter = _model_of(found[0][1], cfg.base)
        ref = {"model": model, "adapter": adapter, "step": found[0][0]}
        log.info("no --reference: the first checkpoint (%s) is the reference", found[0][1].name)
    if not f.exists():
        write_text_atomic(f, json.dumps(ref))
    out = folder.store(None)
    if not folder.complete(None):
        capture(cfg.capture_config(ref["model"], out, adapter=ref["adapter"], resume=store_exists(out)))
    return ref["model"], ref["step"]
