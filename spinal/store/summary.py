"""What `spinal inspect` shows of a store: what it holds, how complete it is, how large, who writes it."""

from __future__ import annotations

import numpy as np

from spinal.store.lock import is_stale, read_holder
from spinal.store.contract import Store
from spinal.text import ranges


def summary(store: Store) -> dict:
    """What is inside a store, how complete, how large (for `spinal inspect`)."""
    done = store.done()
    nbytes = 0
    try:
        nbytes = int(store.hidden.nbytes_stored())
    except Exception:  # remote stores may not list sizes
        nbytes = -1
    src = store.meta.get("source", {})
    return {
        "path": store.path,
        "format_version": store.meta["format_version"],
        "model": src.get("model"),
        "architecture": src.get("architecture"),
        "weights_fingerprint": src.get("weights_fingerprint"),
        "dtype": store.dtype,
        "layers": ranges(store.layers),
        "n_layers": len(store.layers),
        "dim": store.meta["dim"],
        "sequences": store.meta["n_sequences"],
        "tokens": store.meta["n_tokens_valid"],
        "positions": store.meta.get("positions"),
        "units_done": f"{int(done.sum())}/{done.size}",
        "complete": bool(store.complete and done.all()),
        "hidden_bytes_stored": nbytes,
        "hidden_bytes_raw": int(np.prod(store.hidden.shape[::2])) * int(store.meta["n_tokens_valid"])
        * (4 if store.dtype == "float32" else 2),
        "prompts_sha256": store.meta.get("prompts", {}).get("sha256"),
        "created": store.meta.get("created"),
        "writer": _writer(store.path),
        "software": store.meta.get("software"),
        "self_check": store.meta.get("self_check"),
    }


def _writer(path: str) -> str | None:
    """Who holds the store's writer lock now (None: nobody)."""
    h = read_holder(path)
    if h is None:
        return None
    return h.describe() + (" (gone: the next writer takes the lock over)" if is_stale(h) else "")
