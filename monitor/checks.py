"""What a training audit checks before training starts, so a bad input is one line at step 0, never a crash at
step 500: the probe, the audit folder, the reference, and what the trainer lets a capture see."""

from __future__ import annotations

import json
from pathlib import Path

from spinal.capture.discover import discover
from spinal.capture.inputs.prompts import load_prompts
from spinal.capture.live import unwrap
from spinal.capture.load import check_checkpoint
from spinal.errors import InputError
from spinal.monitor.config import MonitorConfig
from spinal.store.lockfile import LOCK_NAME


def check_monitor(cfg: MonitorConfig) -> Path:
    """The probe readable, the audit folder usable, the reference loadable; returns the audit folder."""
    if "://" in cfg.out:
        raise InputError(f"out={cfg.out}: the monitor writes its audit to a local folder; copy it to a bucket "
                         "afterwards, or capture there with `spinal capture --out s3://…`")
    root = Path(cfg.out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise InputError(f"out={cfg.out} is a file; give a folder for the audit")
    if root.is_dir() and not (root / "monitor.json").exists() and any(p.name != LOCK_NAME for p in root.iterdir()):
        raise InputError(f"out={cfg.out} is not empty and holds no monitor.json: not a SPINAL audit folder; "
                         "give a new or empty folder")
    if (root / "monitor.json").exists():
        try:
            json.loads((root / "monitor.json").read_text())
        except ValueError:
            raise InputError(f"{root / 'monitor.json'} cannot be read; give another audit folder") from None
    probe = load_prompts(cfg.prompts, cfg.capture.prompt_options())
    if len(probe.prompts) < 2:
        raise InputError(f"prompts={cfg.prompts}: {len(probe.prompts)} prompt(s); the audit needs at least 2 "
                         "(a few hundred give tight intervals)")
    if cfg.reference:
        check_checkpoint(cfg.reference, allow_pickle=cfg.capture.allow_pickle,
                         trust_remote_code=cfg.capture.trust_remote_code)
    return root


def check_trainer(trainer, cfg: MonitorConfig) -> None:
    """A transformers (or TRL) Trainer whose model a capture can read whole, in this process."""
    if not all(hasattr(trainer, a) for a in ("add_callback", "args", "model", "callback_handler")):
        raise InputError(f"SpinalCallback(trainer, …): expected a transformers Trainer (or a TRL trainer built on "
                         f"it), got {type(trainer).__name__}")
    if getattr(trainer, "is_fsdp_enabled", False):
        raise InputError("SpinalCallback: FSDP shards the weights across processes, so no process holds the "
                         "model whole; audit the saved checkpoints with `spinal watch OUTPUT_DIR` instead")
    ds = getattr(trainer.args, "hf_deepspeed_config", None)
    if getattr(trainer, "is_deepspeed_enabled", False) and ds is not None and ds.is_zero3():
        raise InputError("SpinalCallback: DeepSpeed ZeRO-3 shards the weights across processes; audit the saved "
                         "checkpoints with `spinal watch OUTPUT_DIR` instead (ZeRO-1/2 are supported)")
    if cfg.stop_on_flag and trainer.args.world_size > 1:
        raise InputError("SpinalCallback: stop_on_flag with several training processes would stop only the main "
                         "one; run with one process, or watch the flag in the logs and stop the job yourself")
    if not cfg.every and trainer.args.save_strategy in ("no", getattr(type(trainer.args.save_strategy), "NO", "no")):
        raise InputError("SpinalCallback: the trainer never saves (save_strategy='no'), and the audit runs at "
                         "saves; give every=N to audit every N steps")
    if getattr(trainer, "processing_class", None) is None and getattr(trainer, "tokenizer", None) is None:
        raise InputError("SpinalCallback: the trainer has no tokenizer (processing_class) to encode the probe; "
                         "give the trainer one")
    discover(unwrap(trainer.model))  # a model the capture cannot read is refused now (ModelError, one line)
