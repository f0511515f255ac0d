"""Operational aggregates over the terminal window: Δ_align, coherence, gradient concentration, SPINALScore.

The paper's exact formulas are not public (docs/method.md §4): these are definitions of our own,
recorded in each comparison's DEFINITIONS.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from spinal.analyze.trace_format import Trace


def terminal_layers(n_blocks: int) -> list[int]:
    """Blocks 21–30 when the model has ≥ 30 blocks, else the same relative depth ⌈0.7·n⌉…n (docs/method.md §4)."""
    if n_blocks >= 30:
        return list(range(21, 31))
    return list(range(max(1, math.ceil(0.7 * n_blocks)), n_blocks + 1))


def steps_into(T: np.ndarray) -> np.ndarray:
    """Row mask of the L steps that arrive in the window: step ℓ−1→ℓ (stored on row ℓ−1) for ℓ in T.

    Defined for any depth, including a window that ends at the last layer (which has no outgoing step).
    """
    T = np.asarray(T, dtype=bool)
    out = np.zeros_like(T)
    out[:-1] = T[1:]
    return out


def nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _nanvar(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.var()) if x.size > 1 else math.nan


def pad_rows(x: np.ndarray) -> np.ndarray:
    return np.vstack([x, np.full((1, x.shape[1]), np.nan)])


def n_blocks_of(t: Trace) -> int:
    return int(max(t.table["layer"]))


def pair_aggregates(a: Trace, b: Trace, table: pd.DataFrame, rep_a: np.ndarray, rep_L_step: np.ndarray,
                    term: list[int], grad: np.ndarray | None, weights: tuple[float, float, float]) -> dict:
    """Δ_align and its bootstrap SE, both coherences, gradient concentration and SPINALScore of one pair.

    ``table``: the pair's per-layer table; ``rep_a`` (layer, n_boot) and ``rep_L_step`` (step, n_boot):
    its bootstrap replicates of Δa and ΔL; ``grad``: per-block ‖θ_b − θ_a‖² (block 1…n) or None.
    """
    T = table["terminal"].to_numpy()
    TL = steps_into(T)
    delta_align = nanmean(table["d_a"].to_numpy()[T]) - nanmean(table["d_L"].to_numpy()[TL])
    # SE of Δ_align from the replicates (the a and L replicates are drawn independently)
    rep_LT = pad_rows(rep_L_step)[TL]
    rep_LT = rep_LT[np.isfinite(rep_LT).all(axis=1)]
    se = math.sqrt(_nanvar(rep_a[T].mean(axis=0)) + (_nanvar(rep_LT.mean(axis=0)) if rep_LT.size else 0.0))
    coh_a, coh_b = coherence(a, term), coherence(b, term)
    grad_share = None if grad is None else float(np.sum(grad[np.array(term) - 1]) / np.sum(grad))
    uniform = len(term) / n_blocks_of(a)
    null_coh = coherence_null(a, term)
    z = [delta_align / se if se > 0 else math.nan,
         (coh_b - coh_a) / null_coh if null_coh > 0 else math.nan,
         (grad_share - uniform) / uniform if grad_share is not None else math.nan]
    used = [(w, zi) for w, zi in zip(weights, z) if math.isfinite(zi)]
    score = float(sum(w * zi for w, zi in used) / sum(w for w, _ in used)) if used else math.nan
    return {
        "delta_align": delta_align, "delta_align_se": se,
        "coherence_ref": coh_a, "coherence_other": coh_b, "d_coherence": coh_b - coh_a,
        "grad_concentration": grad_share, "grad_per_block": None if grad is None else [float(g) for g in grad],
        "spinal_score": score, "score_z": z,
    }


def coherence(t: Trace, term: list[int]) -> float:
    """1 / (1 + mean_T κ), κ the second-difference norm of (ℓ/n, z(a), z(L)) (operational definition)."""
    tab = t.table
    n = n_blocks_of(t)
    L = tab["L_mean"].to_numpy().copy()
    L[-1] = L[-2] if L.size > 1 else 0.0  # the last layer has no outgoing step: hold the last value
    x = np.stack([tab["layer"].to_numpy() / n, _z(tab["a"].to_numpy()), _z(L)], axis=1)  # (layer, 3)
    kappa = np.full(len(x), np.nan)
    kappa[1:-1] = np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=1)
    sel = np.isin(tab["layer"].to_numpy(), term) & np.isfinite(kappa)
    return float(1 / (1 + kappa[sel].mean())) if sel.any() else math.nan


def coherence_null(t: Trace, term: list[int]) -> float:
    """Spread of coherence under the a-curve's bootstrap (scale for the Δcoherence z-score)."""
    if t.boot.shape[1] < 2:
        return math.nan
    vals = []
    for b in range(min(t.boot.shape[1], 100)):
        tab = t.table.assign(a=t.boot[:, b])
        vals.append(coherence(Trace(tab, t.meta, t.boot, t.seq_L, {}), term))
    vals = np.array(vals)
    return float(np.nanstd(vals)) if np.isfinite(vals).sum() > 1 else math.nan


def _z(x: np.ndarray) -> np.ndarray:
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / sd if sd > 0 else np.zeros_like(x)
