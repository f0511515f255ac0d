"""Where in the sequence two checkpoints differ: per-position KL between their final distributions, the share of
shifted tokens (the other checkpoint's top token outside the reference's top 3), and the depth × position map.

Published 7B pairs show alignment acting at 5–8 % of positions, early in the reply; this module measures that on
the stores' own token stream, with bootstrap intervals over sequences. Maths (binning, the bootstrap) is pure;
``final_shift`` reads two stores.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch

from spinal.analyze.seeds import Purpose, rng
from spinal.analyze.transport.lens_pass import read_rows
from spinal.store.contract import Store

# Bins of the position within a sequence's stored tokens (0 = the first reply token when positions = response):
# single positions early, where alignment is said to act, then widening.
EDGES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
TOP_K = 3


def bin_labels(edges=EDGES) -> list[str]:
    out = []
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        out.append(f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}–{hi - 1}")
    return out


def relative_positions(sequence: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Per token row, its place among its sequence's stored tokens (0 = first); −1 for padding rows."""
    sequence, position = np.asarray(sequence), np.asarray(position)
    out = np.full(sequence.shape, -1, dtype=np.int64)
    valid = sequence >= 0
    if not valid.any():
        return out
    seq = sequence[valid]
    first = np.full(int(seq.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, seq, position[valid])
    out[valid] = position[valid] - first[seq]
    return out


def position_bins(rel: np.ndarray, edges=EDGES) -> np.ndarray:
    """Bin index per row (−1 for padding)."""
    b = np.searchsorted(np.asarray(edges), rel, side="right") - 1
    return np.where(rel >= 0, b, -1)


@torch.no_grad()
def final_shift(store_a: str, store_b: str, rows: np.ndarray, chunk_mib: int = 256, top_k: int = TOP_K) -> dict:
    """At the last stored layer, per token row: KL(p_b ‖ p_a) in nats between the two checkpoints' final
    distributions (the lens there is the model's own head: the capture's self-check), and whether b's top token
    lies outside a's top ``top_k`` (a shifted token)."""
    a, b = Store.open(store_a), Store.open(store_b)
    lens_a, lens_b = a.lens(), b.lens()
    layer = a.layers[-1]
    ia, ib = a.layer_index(layer), b.layer_index(layer)
    chunk = lens_a.chunk_tokens(chunk_mib, 3)
    kl = np.empty(rows.size, dtype=np.float64)
    shifted = np.empty(rows.size, dtype=bool)
    for start in range(0, rows.size, chunk):
        idx = rows[start : start + chunk]
        ha, hb = torch.from_numpy(read_rows(a, ia, idx)), torch.from_numpy(read_rows(b, ib, idx))
        la, lb = lens_a.log_probs(ha), lens_b.log_probs(hb)  # (chunk, vocab) float32
        kl[start : start + idx.size] = torch.sum(lb.exp() * (lb - la), -1, dtype=torch.float64).clamp_min(0).numpy()
        top_a = la.topk(top_k, dim=-1).indices
        shifted[start : start + idx.size] = ~(top_a == lb.argmax(-1, keepdim=True)).any(-1).numpy()
    return {"layer": int(layer), "kl": kl, "shifted": shifted}


def profile(kl: np.ndarray, shifted: np.ndarray, bins: np.ndarray, sequence: np.ndarray, *, n_boot: int = 1000,
            seed: int = 0, level: float = 0.95, edges=EDGES) -> pd.DataFrame:
    """Per position bin (and 'all'): mean KL and shifted-token share over its tokens, with percentile intervals
    from a bootstrap over sequences (a sequence's tokens are resampled together: they are not independent)."""
    kl, shifted = np.asarray(kl, float), np.asarray(shifted, float)
    bins, sequence = np.asarray(bins), np.asarray(sequence)
    nb = len(edges)
    seqs, inv = np.unique(sequence, return_inverse=True)
    # per (sequence, bin) sums: resampling sequences re-weights these rows
    cell = inv * (nb + 1) + np.where(bins >= 0, bins, nb)
    size = seqs.size * (nb + 1)
    n = np.bincount(cell, minlength=size).reshape(seqs.size, nb + 1)[:, :nb].astype(float)
    s_kl = np.bincount(cell, kl, minlength=size).reshape(seqs.size, nb + 1)[:, :nb]
    s_sh = np.bincount(cell, shifted, minlength=size).reshape(seqs.size, nb + 1)[:, :nb]
    g = rng(seed, Purpose.POSITIONS).integers(0, seqs.size, size=(n_boot, seqs.size))
    w = np.stack([np.bincount(r, minlength=seqs.size) for r in g]).astype(float)  # (boot, sequence) draw counts

    def stat(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tot_n, tot_s = n.sum(0), sums.sum(0)
        point = np.append(tot_s / np.where(tot_n > 0, tot_n, np.nan), tot_s.sum() / max(tot_n.sum(), 1))
        bn, bs = w @ n, w @ sums  # (boot, bin)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = np.concatenate([bs / bn, (bs.sum(1) / bn.sum(1))[:, None]], axis=1)
        q = (1 - level) / 2
        with warnings.catch_warnings():  # a bin no sequence reaches has no replicates: its interval stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(reps, [q, 1 - q], axis=0) if n_boot else (np.full_like(point, np.nan),) * 2
        return point, lo, hi

    kl_p, kl_lo, kl_hi = stat(s_kl)
    sh_p, sh_lo, sh_hi = stat(s_sh)
    counts = np.append(n.sum(0), n.sum()).astype(int)
    seq_counts = np.append((n > 0).sum(0), seqs.size).astype(int)
    return pd.DataFrame({"bin": bin_labels(edges) + ["all"], "start": list(edges) + [0],
                         "tokens": counts, "sequences": seq_counts,
                         "kl": kl_p, "kl_lo": kl_lo, "kl_hi": kl_hi,
                         "shifted": sh_p, "shifted_lo": sh_lo, "shifted_hi": sh_hi})


def early_share(prof: pd.DataFrame, first: int = 8) -> float:
    """Share of all shifted tokens that fall in the first ``first`` positions of the reply."""
    bins = prof[prof["bin"] != "all"]
    shifted = bins["shifted"].fillna(0) * bins["tokens"]
    total = float(shifted.sum())
    return float(shifted[bins["start"] < first].sum() / total) if total > 0 else math.nan
