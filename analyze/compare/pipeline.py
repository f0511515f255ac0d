"""Traces (+ their checkpoints' weights and stores) -> one Comparison: the step `spinal compare` and `spinal run` share."""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from spinal.analyze.compare.paired import check_comparable, compare
from spinal.analyze.compare.pairing import TOKEN_ONLY, distinct_labels
from spinal.analyze.compare.comparison import Comparison, check_stores, check_weights, with_cross_readout, with_positions
from spinal.analyze.trace import Trace
from spinal.config import CompareConfig
from spinal.errors import InputError
from spinal.store.contract import Store

log = logging.getLogger(__name__)


def comparison(traces: list[Trace], cfg: CompareConfig, *, weights: list[str] | None = None,
               stores: list[str] | None = None, weights_optional: bool = False, workers: int = 0,
               progress=None, submit: Callable | None = None) -> Comparison:
    """Compare ``traces`` (the reference first) with paired statistics; with ``weights`` (one checkpoint folder
    or Hub id per trace) add the per-block parameter change, with ``stores`` (one per trace) the cross-readout lens.

    Every input is checked against the traces before any work. ``weights_optional``: a checkpoint whose
    weights cannot be compared (e.g. no safetensors) skips the parameter change with a warning instead of
    refusing the whole comparison. The lens work runs as tasks, as analyze's do: one per (pair, layer) for the
    cross-readout, one per pair for the positions, through ``submit(tasks, workers, progress)`` (a backend's, e.g.
    Ray's) or else on ``workers`` local processes (0: one per core), reporting ``progress(done, total)``."""
    traces = distinct_labels(traces)
    pairings = ["token", *check_comparable(traces, cfg)[0]]  # every refusal before any work
    if weights and not weights_optional:
        weights = check_weights(traces, weights)
    if stores:
        check_stores(traces, stores)
    grad = _parameter_change(traces, weights, weights_optional) if weights else None
    if grad is not None:  # one checkpoint's two reply sides: no parameter change to concentrate
        grad = [None if how == "prompt" and t.meta.get("weights_fingerprint") == traces[0].meta.get(
            "weights_fingerprint") else g for g, t, how in zip(grad, traces, pairings)]
    result = compare(traces, cfg, grad=grad)
    if stores and "prompt" in pairings and (cfg.cross_readout_tokens or cfg.position_tokens):
        log.warning("paired by prompt (%s): %s", ", ".join(t.label for t, how in zip(traces, pairings)
                                                          if how == "prompt"),
                    "; ".join(f"{k} skipped, {why}" for k, why in TOKEN_ONLY.items()))
    keep = [i for i, how in enumerate(pairings) if how == "token"]  # the reference and the token-paired
    traces, stores = [traces[i] for i in keep], [stores[i] for i in keep] if stores else stores
    if stores and len(stores) > 1 and cfg.cross_readout_tokens:
        import pandas as pd

        from spinal.analyze.compare.cross_readout import cross_readout_tasks
        from spinal.analyze.pool import run_tasks

        per_pair = [cross_readout_tasks(stores[0], s, lens_tokens=cfg.cross_readout_tokens, seed=cfg.seed)
                    for s in stores[1:]]  # every pair's checks before any work; then all layers of all pairs at once
        tasks = [t for pair in per_pair for t in pair]
        vocab_dim = math.prod(Store.open(stores[0]).group["lens/unembed"].shape)
        flops = sum(2 * 3 * kw["rows"].size * vocab_dim for _, kw in tasks)  # three readouts per token and layer
        done = (submit or run_tasks)(tasks, _pool_size(flops, workers), progress)
        frames, k = {}, 0
        for t, pair in zip(traces[1:], per_pair):
            frames[t.label] = pd.DataFrame(done[k : k + len(pair)])
            k += len(pair)
        result = with_cross_readout(result, frames)
    if stores and len(stores) > 1 and cfg.position_tokens:
        result = _positions(result, traces, stores, cfg, workers, submit, progress)
    if stores and len(stores) > 1 and cfg.cka:  # the token-paired ones (none: nothing to pair)
        result = _cka(result, traces, stores, cfg, workers, submit, progress)
    return result


def _cka(result: Comparison, traces: list[Trace], stores: list[str], cfg: CompareConfig, workers: int,
         submit: Callable | None = None, progress=None) -> Comparison:
    """Linear CKA of every layer of every pair against the reference (analyze/compare/cka.py): one task per layer,
    for all pairs (the reference's states decoded and its block moments formed once), over ``cka_tokens`` seeded
    tokens, on the traces' sequence blocks."""
    import pandas as pd

    from spinal.analyze.compare.cka import cka_tasks, with_cka
    from spinal.analyze.pool import run_tasks

    layers = [int(l) for l in traces[0].table["layer"]]
    blocks = int(traces[0].meta.get("blocks_used") or 16)
    tasks = cka_tasks(stores[0], stores[1:], layers, blocks, tokens=cfg.cka_tokens, seed=cfg.seed)
    n = int(tasks[0][1]["rows"].size) if tasks else 0
    dim = int(Store.open(stores[0]).meta["dim"])
    flops = 2 * n * dim**2 * (1 + 2 * (len(stores) - 1)) * len(tasks)  # the reference's scatter, then two per pair
    done = (submit or run_tasks)(tasks, _pool_size(flops, workers), progress)  # per layer: one per pair
    return with_cka(result, {t.label: pd.DataFrame([d[k] for d in done]) for k, t in enumerate(traces[1:])},
                    tokens=n)


def _pool_size(flops: float, workers: int) -> int:
    """Processes for ``flops`` of lens work: 1 below about a core-second (starting workers costs more), else
    ``workers`` (0: one per core)."""
    import os

    return 1 if flops < 2e10 else (workers or os.cpu_count() or 1)


def _positions(result: Comparison, traces: list[Trace], stores: list[str], cfg: CompareConfig,
               workers: int, submit: Callable | None = None, progress=None) -> Comparison:
    """Where in the reply each checkpoint differs from the reference: final-layer KL and shifted tokens per token
    (one task per pair), then the per-position profile with a bootstrap over sequences."""
    from spinal.analyze.transport.lens_pass import token_subsample
    from spinal.analyze.pool import run_tasks
    from spinal.analyze.compare.positions import final_shift, position_bins, profile, relative_positions
    from spinal.analyze.seeds import Purpose

    ref = Store.open(stores[0])
    tok = ref.tokens()
    sub = token_subsample(ref, cfg.position_tokens, cfg.seed, purpose=Purpose.POSITIONS)
    rows = np.flatnonzero(tok["sequence"] >= 0) if sub is None else sub
    tasks = [(final_shift, dict(store_a=stores[0], store_b=s, rows=rows)) for s in stores[1:]]
    flops = 2 * 2 * rows.size * math.prod(ref.group["lens/unembed"].shape) * len(tasks)
    done = (submit or run_tasks)(tasks, _pool_size(flops, workers), progress)
    bins = position_bins(relative_positions(tok["sequence"], tok["position"]))[rows]
    seq = tok["sequence"][rows]
    profiles = {t.label: profile(d["kl"], d["shifted"], bins, seq, n_boot=cfg.n_boot, seed=cfg.seed)
                for t, d in zip(traces[1:], done)}
    return with_positions(result, profiles)


def _parameter_change(traces: list[Trace], weights: list[str], optional: bool) -> list | None:
    """[None, ‖θ_1 − θ_0‖² per block, …]; None (with a warning) when ``optional`` and the weights do not fit."""
    from spinal.analyze.compare.weights import block_sq_change

    try:
        if optional:
            weights = check_weights(traces, weights)
        n_blocks = int(max(traces[0].table["layer"]))
        return [None] + [block_sq_change(weights[0], w, n_blocks) for w in weights[1:]]
    except InputError as e:
        if not optional:
            raise
        log.warning("gradient concentration skipped: %s", e)
        return None
