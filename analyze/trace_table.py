"""A depth trace's table, one row per layer, from its layers' spectra and the lens pass (and how precisely it
reads the L curve)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from spinal.analyze.contraction.layer_spectrum import LayerSpectrum
from spinal.analyze.contraction.intervals import t_interval
from spinal.analyze.contraction.ranks import NAMES as RANKS
from spinal.analyze.contraction.spectrum import with_curvature
from spinal.analyze.transport.distances import summarize
from spinal.analyze.transport.lens_pass import LensPartial
from spinal.analyze.transport.lens_size import cluster_se
from spinal.store.contract import Store


def layer_table(spectra: list[LayerSpectrum], lens: LensPartial, store: Store) -> tuple[pd.DataFrame, np.ndarray]:
    """The trace's table, one row per layer (a, its interval, fit diagnostics, the lens columns; L and its
    companions for the step to the next layer, NaN on the last), and (sequence, step) mean L per sequence."""
    rows = []
    n = max(lens.n, 1)
    nc = max(lens.n_companion, 1)
    n_seq = int(store.meta["n_sequences"])
    seq_L = np.full((n_seq, len(spectra) - 1), np.nan)
    for j, s in enumerate(spectra):
        c, r = s.centered, s.raw
        lo, hi = t_interval(c.a_wls, s.boot, s.blocks)
        c_lo, c_hi = t_interval(c.curvature, s.curv_boot, s.blocks)
        row = {
            "layer": s.layer, "a": c.a_wls, "a_lo": lo, "a_hi": hi, "a_mle": c.a_mle, "r2": c.r2, "ks": c.ks,
            "k_lo": c.k_lo, "k_hi": c.k_hi, "rank": c.rank, "spikes": c.spikes, "floor_rank": c.floor_rank,
            "top1_share": c.top1_share, "se_scale": s.se_scale, "se_jackknife": s.se_jackknife,
            "kappa": s.kappa, "kappa_layer": s.kappa_layer,
            "status": with_curvature(c.status, c_lo, c_hi),
            "curvature": c.curvature, "curvature_lo": c_lo, "curvature_hi": c_hi,
            "a_raw": r.a_wls, "status_raw": r.status, "spikes_raw": r.spikes, "top1_share_raw": r.top1_share,
            "null_sd_a": float(np.sqrt(np.mean(s.null_diffs**2))) if s.null_diffs.size else math.nan,
            "entropy": lens.sums["entropy"][j] / nc, "kl_final": lens.sums["kl_final"][j] / nc,
            "alpha_req": 2 * c.a_wls, "alpha_req_lo": 2 * lo, "alpha_req_hi": 2 * hi,
        }
        for i, name in enumerate(RANKS):  # effective rank and RankMe, first-order block-bootstrap intervals
            point = float(s.rank_values[i])
            row[name] = point
            row[f"{name}_lo"], row[f"{name}_hi"] = t_interval(point, s.rank_boot[:, i], s.blocks)
        if j < len(spectra) - 1:
            stats = summarize(lens.steps_L[j])
            row.update({"L_mean": stats.mean, "L_q05": stats.q05, "L_q25": stats.q25, "L_q50": stats.q50,
                        "L_q75": stats.q75, "L_q95": stats.q95,
                        "hellinger": lens.sums["hellinger"][j] / n, "js": lens.sums["js"][j] / nc})
            row["L_se"] = math.nan
            if lens.seq.size:
                sums = np.bincount(lens.seq, weights=lens.steps_L[j], minlength=n_seq)
                counts = np.bincount(lens.seq, minlength=n_seq)
                with np.errstate(invalid="ignore", divide="ignore"):
                    seq_L[:, j] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
                row["L_se"] = cluster_se(sums, counts)
        else:
            row.update({k: math.nan for k in ("L_mean", "L_se", "L_q05", "L_q25", "L_q50", "L_q75", "L_q95",
                                              "hellinger", "js")})
        rows.append(row)
    return pd.DataFrame(rows), seq_L


def l_precision(table: pd.DataFrame) -> float:
    """The largest standard error of a step's mean L as a share of the steps' spread (SD of the L means): what
    the lens token subsample leaves uncertain in the shape of the L curve."""
    se, mean = table["L_se"].to_numpy(), table["L_mean"].to_numpy()
    ok = np.isfinite(se) & np.isfinite(mean)
    spread = float(np.std(mean[ok], ddof=1)) if ok.sum() >= 2 else math.nan
    return float(np.max(se[ok]) / spread) if ok.any() and spread > 0 else math.nan
