"""Store -> depth trace: fan the per-layer spectrum and lens tasks out over processes, gather one table per checkpoint."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import time
import uuid
from dataclasses import asdict
from typing import Callable

import numpy as np

from spinal.analyze.contraction import calibration
from spinal.analyze.contraction.layer_spectrum import LayerSpectrum, layer_spectrum, pool
from spinal.analyze.contraction.ranks import NAMES as RANKS
from spinal.analyze.pool import Progress, run_tasks
from spinal.analyze.seeds import Purpose
from spinal.analyze.trace_format import TRACE_FORMAT, Trace
from spinal.analyze.trace_table import l_precision, layer_table
from spinal.analyze.transport.lens_pass import (LensPartial, extension_order, lens_pass, selected_tokens, token_ranges,
                                                token_subsample)
from spinal.analyze.transport.lens_size import GROWTH, grow
from spinal.config import AnalyzeConfig
from spinal.specs import parse_layers, parse_window
from spinal.errors import InputError, StoreError
from spinal.store.contract import Store

log = logging.getLogger(__name__)
LENS_ROUNDS = 3  # growth rounds of the lens subsample beyond its pilot (analyze/transport/lens_size.py)
# Below this much work (flop-like units, _auto_workers) `workers = 0` runs the tasks in this process, on its own
# threads: starting a process per core costs ~3 s here, more than it saves. The demo's traces (13 layers, 12,288
# lens tokens, vocab 3,072, d = 96) are below it: 6.7–10.8 s in this process against 10.0–15.1 s on 2 workers.
SMALL_WORK = 3e10


def analyze(cfg: AnalyzeConfig, progress: Progress | None = None, label: str | None = None,
            submit: Callable | None = None, lens_floor: int = 0) -> Trace:
    """Run the analysis of one store. ``submit`` (optional) maps (fn, kwargs-list) -> results, e.g. Ray.

    ``lens_floor``: grow the lens subsample to at least this many tokens (a run passes its reference's size, so
    every checkpoint's L is read on the same tokens; `cfg.lens_precision` may grow it further)."""
    store = Store.open(cfg.store)
    store.check_tables()  # a damaged table is one clear refusal before any work
    done = store.done(strict=True)
    if not store.complete or not done.all():
        raise StoreError(
            f"{cfg.store} is incomplete ({int((~done).sum())} of {store.meta['n_units']} units missing); "
            "finish it with `spinal capture … --resume`"
        )
    layers = parse_layers(cfg.layers, None) or store.layers
    missing = [l for l in layers if l not in store.layers]
    if missing:
        raise InputError(f"layers {missing} are not in {cfg.store}; it holds {store.layers[0]}–{store.layers[-1]}")
    if len(layers) < 2:
        raise InputError(f"need ≥ 2 layers for a depth trace, got {layers}")
    window = parse_window(cfg.window)
    _check_design(cfg, store, window)
    sub = token_subsample(store, cfg.lens_tokens, cfg.seed)
    comp = token_subsample(store, cfg.companion_tokens, cfg.seed, within=sub, purpose=Purpose.COMPANION_TOKENS)
    if comp is None and sub is not None:
        comp = sub
    workers = cfg.workers or _auto_workers(store, layers, sub)
    blocks_used = min(cfg.blocks, int(store.meta["n_sequences"]))  # s mod blocks: the same blocks either way
    t0 = time.perf_counter()
    run = submit or run_tasks
    tasks = _tasks(cfg, store, layers, window, blocks_used, workers, sub, comp)
    results = run(tasks, workers, progress)
    spectra: list[LayerSpectrum] = pool(results[: len(layers)])  # one calibration c for the trace's layers
    lens = _merged(results[len(layers):])
    growth = {"pilot": lens.n, "rounds": 0, "floor": lens_floor}
    if sub is not None and (cfg.lens_precision > 0 or lens_floor > lens.n):
        lens, growth = _grow_lens(cfg, store, layers, sub, lens, workers, run, _after(progress, len(tasks)),
                                  lens_floor)
    table, seq_L = layer_table(spectra, lens, store)
    meta = _meta(cfg, store, label, layers, window, blocks_used, spectra, lens, table, t0, growth)
    _warn_precision(cfg, meta, growth)
    left = [s.leave_one_out for s in spectra]
    jackknife = np.stack(left) if all(x.size for x in left) else np.zeros((0, 0))  # a layer without a fit: NaN row
    rank_boot = {name: np.stack([s.rank_boot[:, i] for s in spectra]) for i, name in enumerate(RANKS)
                 } if cfg.n_boot and cfg.ranks else {}
    return Trace(table, meta, np.stack([s.boot for s in spectra]) if cfg.n_boot else np.zeros((len(layers), 0)),
                 seq_L, {s.layer: s.sv for s in spectra}, jackknife, rank_boot)


def _auto_workers(store: Store, layers: list[int], sub: np.ndarray | None) -> int:
    """Processes for `workers = 0`: one per core, or this process alone when the store is small (SMALL_WORK). The
    lens costs ~30 operations per token and vocabulary entry and layer; a layer's Gram N·d², its eigensolves ~10·d³."""
    n, d = int(store.meta["n_tokens_valid"]), int(store.meta["dim"])
    vocab = int(store.group["lens/unembed"].shape[0])
    tokens = n if sub is None else sub.size
    work = len(layers) * (30.0 * tokens * vocab + float(n) * d * d + 10.0 * d**3)
    return 1 if work < SMALL_WORK else os.cpu_count() or 1


def _merged(parts: list[LensPartial]) -> LensPartial:
    lens = parts[0]
    for part in parts[1:]:
        lens = lens.merge(part)
    return lens


def _after(progress: Progress | None, done: int) -> Progress | None:
    """The progress of later task batches, counted after the ``done`` tasks already run."""
    return (lambda d, t: progress(done + d, done + t)) if progress else None


def _grow_lens(cfg: AnalyzeConfig, store: Store, layers: list[int], sub: np.ndarray, lens: LensPartial,
               workers: int, run: Callable, progress: Progress | None, floor: int) -> tuple[LensPartial, dict]:
    """The lens subsample grown beyond its pilot ``sub`` (already passed: ``lens``) by a prefix of the remaining
    tokens in one seeded order, in rounds, until ``cfg.lens_precision`` holds (analyze/transport/lens_size.py ``grow``).
    Each round runs lens tasks over only the tokens it adds; companions stay the pilot's, unless every lens token
    is asked to be one (companion_tokens = 0)."""
    rest = extension_order(store, sub, cfg.seed)
    state = {"lens": lens, "done": 0}
    companions = None if cfg.companion_tokens == 0 else np.zeros(0, np.int64)

    def measure(n: int):
        have = state["lens"].n
        if n > have:
            new = np.sort(rest[have - sub.size : n - sub.size])
            tasks = [(lens_pass, dict(store_path=cfg.store, token_range=r, layers=layers, chunk_mib=cfg.chunk_mib,
                                      subsample=new, companions=companions))
                     for r in token_ranges(new, workers)]
            state["lens"] = _merged([state["lens"], *run(tasks, workers, _after(progress, state["done"]))])
            state["done"] += len(tasks)
        return state["lens"].steps_L, state["lens"].seq

    target = cfg.lens_precision if cfg.lens_precision > 0 else math.inf
    _, _, rounds = grow(measure, sub.size, sub.size + rest.size, int(store.meta["n_sequences"]), target,
                        rounds=LENS_ROUNDS, floor=floor)
    return state["lens"], {"pilot": int(sub.size), "rounds": rounds, "floor": floor}


def _warn_precision(cfg: AnalyzeConfig, meta: dict, growth: dict) -> None:
    """Say when the lens subsample did not reach the precision asked for, and what would."""
    p, n, n_all = meta["L_precision"], meta["lens_tokens"], meta["n_tokens"]
    if not cfg.lens_precision or not p > cfg.lens_precision:
        return
    what = (f"mean L uncertain by {100 * p:.2f} % of its between-layer spread (target {100 * cfg.lens_precision:g} %)")
    if n >= n_all:
        log.warning("every one of the %d tokens leaves %s: the prompts themselves differ that much, so more prompts, "
                    "not more tokens, would narrow it", n_all, what)
    else:
        log.warning("the %d lens tokens (pilot %d, %d growth rounds) leave %s: pass a larger --lens-tokens, or 0 for "
                    "all %d tokens", n, growth["pilot"], growth["rounds"], what, n_all)


def _tasks(cfg: AnalyzeConfig, store: Store, layers: list[int], window, blocks_used: int, workers: int, sub, comp
           ) -> list:
    """One spectrum task per layer, then one lens task per token range (as many ranges as workers)."""
    spec_kw = dict(blocks=blocks_used, n_boot=cfg.n_boot, null_splits=cfg.null_splits, seed=cfg.seed, window=window,
                   calibration_sims=calibration.per_layer(cfg.calibration_sims, len(layers)), rank_intervals=cfg.ranks)
    tasks = [(layer_spectrum, dict(store_path=cfg.store, layer=l, **spec_kw)) for l in layers]
    tasks += [(lens_pass, dict(store_path=cfg.store, token_range=r, layers=layers, chunk_mib=cfg.chunk_mib,
                               subsample=sub, companions=comp))
              for r in token_ranges(selected_tokens(store, sub), workers)]
    return tasks


def _meta(cfg: AnalyzeConfig, store: Store, label, layers, window, blocks_used, spectra, lens, table, t0,
          growth: dict) -> dict:
    """trace.json: what the trace was made from, every option and rule used, the trace-level summaries."""
    return {
        "trace_format": TRACE_FORMAT,
        "label": label,
        "store": cfg.store,
        "store_identity": store.meta.get("identity"),
        "model": store.meta.get("source", {}).get("model"),
        "revision": store.meta.get("source", {}).get("revision"),  # of a Hub id: the commit captured
        "architecture": store.meta.get("source", {}).get("architecture"),
        "weights_fingerprint": store.meta.get("source", {}).get("weights_fingerprint"),
        "tokens_sha256": tokens_sha256(store),
        "prompt_ids_sha256": prompt_ids_sha256(store),  # sequences in prompt order: what pairing by prompt checks
        "reply": (store.meta.get("prompts") or {}).get("source", {}).get("reply"),  # chosen | rejected | None
        "storage_dtype": store.dtype,
        "dim": int(store.meta["dim"]),
        "n_tokens": int(spectra[0].n_tokens),
        "n_sequences": int(store.meta["n_sequences"]),
        "lens_tokens": int(lens.n),
        "L_precision": l_precision(table),
        "L_precision_target": cfg.lens_precision or None,
        "lens_pilot": growth["pilot"],
        "lens_rounds": growth["rounds"],
        "lens_floor": growth["floor"],
        "lens_rule": "lens_tokens: a seeded pilot subsample; then, while L_precision > L_precision_target (≤ "
                     f"{LENS_ROUNDS} rounds), grown to the size SE²(n) ≈ a + W·n0/n predicts (analyze/transport/lens_size.py), "
                     f"≤ {GROWTH}× per round, by a prefix of the other tokens in a seeded order (at least lens_floor)"
        if cfg.lens_precision or growth["floor"] > growth["pilot"] else "exactly lens_tokens (seeded subsample)",
        "blocks_used": blocks_used,
        "calibration_sims_per_layer": calibration.per_layer(cfg.calibration_sims, len(layers))
        if calibration.needed(int(spectra[0].n_tokens), int(store.meta["dim"])) else 0,
        "companion_tokens": int(lens.n_companion),
        "layers": layers,
        "options": asdict(cfg),
        "positions": store.meta.get("positions"),
        "window_rule": "auto: k_lo = max(spikes+1, 5, ceil(0.05 r)), k_hi = min(floor(0.5 r), noise-floor rank)"
        if window is None else f"fixed {window}",
        "fit": "weighted least squares of log σ_k on log(k − spikes), weights 1/k; MLE cross-check (Clauset, censored)",
        "interval": "a_lo/a_hi: 95 % for a at this token count (E[â(N)], not the population exponent): a ± "
                    "t(g−1)·√(g/(g−1))·SD of block-bootstrap replicates over g = blocks_used sequence blocks, each "
                    "replicate's spectrum to first order from one eigh (analyze/contraction/influence.py), fitted in a's window; "
                    "where N ≤ 8·d the SD is set, by the factor se_scale, to κ·se_jackknife: the exact "
                    "delete-one-block jackknife SE (one eigensolve per left-out block) times κ = sd(â)/median(SE "
                    "jackknife) over calibration_sims_per_layer simulated Gaussian layers of each layer's fitted "
                    "spectrum, same N, d, blocks and window, one seeded stream per layer, pooled over the layers as "
                    "√(Σ(S−1)·κ_ℓ²/Σ(S−1)) (kappa; each layer's own in kappa_layer; analyze/contraction/calibration.py); "
                    "comparisons: κ times the paired exact jackknife (jackknife.parquet); "
                    "bootstrap.parquet holds the scaled replicates",
        "alpha_name": "rank-decay exponent a (σ_k ∝ k^-a); α-ReQ = 2a (alpha_req); WeightWatcher α = 1 + 1/(2a)",
        "ranks": "erank: exp of the entropy of the centered eigenvalues λ_k normalised to sum 1; rankme: the same of "
                 "the singular values σ_k (RankMe, Garrido et al. 2023, without its ε, on the centered spectrum); "
                 "*_lo/*_hi: value ± t(g−1)·√(g/(g−1))·SD of their first-order block-bootstrap replicates (the "
                 "block draws of a's; analyze/contraction/ranks.py), not calibrated where N ≤ 8·d",
        "path_length": float(np.nansum(table["L_mean"].to_numpy())),
        "chord_mean": float(lens.chord.mean()) if lens.chord.size else math.nan,
        "straightness": float(lens.chord.mean() / np.nansum(table["L_mean"].to_numpy())) if lens.chord.size else math.nan,
        "seconds": time.perf_counter() - t0,
        "software": _software(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trace_id": uuid.uuid4().hex,  # comparisons and reports name the exact traces they were made from
    }


def _check_design(cfg: AnalyzeConfig, store: Store, window: tuple[int, int] | None) -> None:
    """Options that cannot give numbers on this store are refused before any work, not turned into NaN."""
    n_seq, n_tok, dim = int(store.meta["n_sequences"]), int(store.meta["n_tokens_valid"]), int(store.meta["dim"])
    rank = min(n_tok - 1, dim)
    if window is not None and window[1] > rank:
        raise InputError(f"--window {cfg.window}: the spectra of {store.path} have rank {rank} ({n_tok} tokens, "
                         f"d = {dim}); end the window at ≤ {max(2, rank // 2)} (half the rank, docs/method.md §2) or use auto")
    if (cfg.n_boot or cfg.null_splits) and min(n_seq, cfg.blocks) < 2:
        raise InputError(f"{store.path} holds {n_seq} sequence(s) in {min(n_seq, cfg.blocks)} block(s): a confidence "
                         "interval and a null spread need ≥ 2; capture more prompts, or pass --n-boot 0 "
                         "--null-splits 0 for point estimates only")
    if cfg.blocks > n_seq:
        log.warning("--blocks %d is more than the %d sequences of %s: the bootstrap resamples %d blocks of one "
                    "sequence each (recorded as blocks_used)", cfg.blocks, n_seq, store.path, n_seq)


def tokens_sha256(store: Store) -> str:
    """Hash of the valid token stream (ids, sequence, position): comparisons require it to match."""
    t = store.tokens()
    valid = t["sequence"] >= 0
    h = hashlib.sha256()
    for k in ("ids", "sequence", "position"):
        h.update(np.ascontiguousarray(t[k][valid]).astype(np.int64).tobytes())
    return h.hexdigest()


def prompt_ids_sha256(store: Store) -> str:
    """Hash of the store's prompt ids in sequence order: two stores whose sequences hold the same prompts in the
    same order (the two reply sides of one preference set) can be compared paired by prompt."""
    h = hashlib.sha256()
    for pid in store.sequences()["prompt_id"]:
        h.update(str(pid).encode() + b"\n")
    return h.hexdigest()


def _software() -> dict:
    import scipy
    import torch

    import spinal

    return {"spinal": spinal.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__, "python": platform.python_version()}
