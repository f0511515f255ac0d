"""Capture a model that is in memory (a training run's), and hand it back exactly as it was: no reload, no copy.

A training loop owns the model. A capture borrows it: every module in eval mode, no autograd, then each module's
own training flag and every random stream (Python, NumPy, torch on the CPU and on each GPU) put back as they were,
so a run that is audited trains to the same weights, bit for bit, as one that is not (tests/monitor). What the
store records of a live model is the model's own identity (its name or path, config and tokenizer) and where in
training it was (step, seed, adapter): its weights have no files to fingerprint.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from torch import nn

from spinal.capture.load import Loaded, tokenizer_fingerprint
from spinal.capture.runner import CaptureResult, capture
from spinal.config import CaptureConfig
from spinal.errors import ModelError


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a training wrapper: DDP/DataParallel's ``module``, a PEFT model's base model
    (its LoRA layers stay in place and live, so the capture sees the adapted model, unmerged)."""
    while hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module):
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


def adapter_record(model: nn.Module) -> dict | None:
    """What identifies a PEFT model's adapter (type, rank, targets, base), or None for a plain model."""
    cfgs = getattr(model, "peft_config", None)
    if not cfgs:
        return None
    cfg = next(iter(cfgs.values()))
    keep = ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path")
    return {k: (sorted(v) if isinstance(v, set) else str(v) if k == "peft_type" else v)
            for k in keep if (v := getattr(cfg, k, None)) is not None}


def live_source(model: nn.Module, tokenizer, name: str, training: dict) -> dict:
    """``Loaded.source`` for an in-memory model: no weight files, so the name carries the training step (a
    resumed store must be the same step's) and ``training`` says where in the run it was."""
    inner = unwrap(model)
    cfg = inner.config
    return {
        "model": f"{name} (live, training step {training['step']})",
        "architecture": type(inner).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "revision": None,
        "weights_fingerprint": None,
        "dtype": str(next(inner.parameters()).dtype).replace("torch.", ""),
        "device_map": str(next(inner.parameters()).device),
        "config": cfg.to_dict(),
        "tokenizer": {"class": type(tokenizer).__name__, "vocab_size": getattr(tokenizer, "vocab_size", None),
                      "fingerprint": tokenizer_fingerprint(tokenizer)},
        "training": {**training, "adapter": adapter_record(model)},
    }


@contextlib.contextmanager
def borrowed(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode under ``torch.no_grad``, computing in its own dtype; afterwards each module's training
    flag, its forward and every random stream restored, whatever happened inside (an error included).

    Mixed-precision training (accelerate, as the Trainer and TRL use it) replaces a model's ``forward`` with one
    under autocast and keeps the original as ``_original_forward``: the capture runs the original, so a float32
    model is read in float32, as it would be from its saved checkpoint (the self-check found the difference:
    bf16 autocast logits 0.3 % off the float32 lens)."""
    flags = [(m, m.training) for m in model.modules()]
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    patched = {m: m.__dict__["forward"] for m in model.modules()
               if "forward" in m.__dict__ and hasattr(m, "_original_forward")}
    model.eval()
    try:
        for m in patched:
            m.forward = m._original_forward
        with torch.no_grad():
            yield model
    finally:
        for m, forward in patched.items():
            m.forward = forward
        for m, flag in flags:
            m.training = flag
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def capture_live(cfg: CaptureConfig, model: nn.Module, tokenizer, name: str, training: dict,
                 progress=None) -> CaptureResult:
    """Capture ``model`` (live, in this process) into the store ``cfg.out``, as `spinal capture` captures a
    checkpoint: same checks, same store. ``cfg.model`` is ignored; ``name`` and ``training`` are recorded."""
    if tokenizer is None:
        raise ModelError(f"{name}: no tokenizer to encode the probe prompts; give the trainer a processing_class "
                         "(or the callback a tokenizer)")
    inner = unwrap(model)
    with borrowed(model):
        return capture(cfg, progress, Loaded(inner, tokenizer, live_source(model, tokenizer, name, training)))
