"""What a store records about the inputs that made it, and the refusal of a resume whose inputs or layout differ."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict

import numpy as np

from spinal.capture.load import Loaded
from spinal.capture.inputs.prompts import PromptSet
from spinal.capture.tokens import Tokenized
from spinal.config import CaptureConfig
from spinal.errors import StoreError
from spinal.store.layout import TokenLayout
from spinal.store.contract import Store

# Options whose change makes a resumed store a different store.
IDENTITY_KEYS = ("weights_fingerprint", "model", "prompts_sha256", "layers", "positions", "max_length",
                 "chat_template", "dtype", "batch_size", "tokenizer_fingerprint", "unit_tokens")


def identity(cfg: CaptureConfig, loaded: Loaded, prompts: PromptSet, layers, real_dtype: str) -> dict:
    """The values of ``IDENTITY_KEYS`` for this capture."""
    return {
        "weights_fingerprint": loaded.source["weights_fingerprint"],
        "model": loaded.source["model"] if loaded.source["weights_fingerprint"] is None else None,
        "prompts_sha256": prompts.sha256,
        "layers": list(layers),
        "positions": cfg.stored_positions,
        "max_length": cfg.max_length,
        "chat_template": cfg.chat_template,
        "dtype": real_dtype,
        "batch_size": cfg.batch_size,
        "tokenizer_fingerprint": loaded.source["tokenizer"]["fingerprint"],
        "unit_tokens": cfg.unit_tokens,
    }


def check_same(store: Store, ident: dict, path: str) -> None:
    """Refuse to resume a store made with different inputs, naming each that changed."""
    stored = store.meta.get("identity", {})
    changed = [k for k in IDENTITY_KEYS if stored.get(k) != ident.get(k)]
    if changed:
        detail = "; ".join(f"{k}: store has {_short(stored.get(k))}, now {_short(ident.get(k))}" for k in changed)
        raise StoreError(f"--resume refused: {path} was made with different inputs ({detail})")


def check_same_layout(store: Store, layout: TokenLayout, path: str) -> None:
    """Refuse to resume a store whose token layout is not the one planned in memory (units are written from it).

    Same inputs plan the same layout, so this holds unless another SPINAL planned the store; its unit
    table and sequence offsets are read once, here.
    """
    detail = _layout_difference(store, layout)
    if detail is not None:
        raise StoreError(f"--resume refused: {path} lays out its tokens differently from the plan for these inputs "
                         f"({detail}), so another SPINAL made it: recapture it with --overwrite")


def _layout_difference(store: Store, layout: TokenLayout) -> str | None:
    """The first difference between the store's layout and the plan, in words (None: the same)."""
    if len(store.units) != len(layout.units):
        return f"store: {len(store.units)} units, plan: {len(layout.units)}"
    for a, b in zip(store.units, layout.units):
        if a != b:
            return (f"unit {a.index}: store has sequences {a.seq_start}–{a.seq_stop} in tokens "
                    f"{a.token_start}–{a.token_stop}, the plan {b.seq_start}–{b.seq_stop} in "
                    f"{b.token_start}–{b.token_stop}")
    offsets = store.read("sequences/offset")
    if offsets.shape != layout.offsets.shape:
        return f"store: {offsets.shape[0]} sequences, plan: {layout.offsets.shape[0]}"
    moved = np.flatnonzero(offsets != layout.offsets)
    if moved.size:
        s = int(moved[0])
        return f"sequence {s} starts at token {int(offsets[s])} in the store, {int(layout.offsets[s])} in the plan"
    return None


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def metadata(cfg: CaptureConfig, loaded: Loaded, prompts: PromptSet, tokd: Tokenized, ident: dict,
             check: dict | None) -> dict:
    """The store's root attributes about its making: identity, source, options, prompts, software, time."""
    import torch
    import transformers
    import zarr

    import spinal

    return {
        "identity": ident,
        "source": loaded.source,
        "capture": {k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite")},
        "prompts": {"path": prompts.path, "sha256": prompts.sha256, "count": len(prompts.prompts),
                    "truncated": int(tokd.truncated.sum()), "source": prompts.source},
        "positions": cfg.stored_positions,
        "self_check": check,
        "software": {"spinal": spinal.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "zarr": zarr.__version__,
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
