"""Cross-readout lens: read checkpoint B's hidden states with A's lens (and vice versa) to split "representation moved"
from "readout moved" per layer (docs/method.md §4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from spinal.analyze.transport.lens_pass import read_rows, token_subsample
from spinal.analyze.compare.positions import EDGES, position_bins, relative_positions
from spinal.analyze.pool import run_tasks
from spinal.analyze.transport.distances import fisher_rao
from spinal.errors import InputError
from spinal.store.contract import Store


def cross_readout(store_a: str, store_b: str, *, layers: list[int] | None = None, lens_tokens: int = 20000,
                  seed: int = 0, chunk_mib: int = 256, workers: int = 1) -> pd.DataFrame:
    """Per layer, mean Fisher–Rao distances over (a seeded subsample of) the shared tokens:

    - ``fr_total``: FR(lens_A(h_A), lens_B(h_B)), how much the layer's readout distribution changed;
    - ``fr_representation``: FR(lens_A(h_A), lens_A(h_B)), the change seen through A's fixed readout;
    - ``fr_readout``: FR(lens_A(h_B), lens_B(h_B)), the change of readout on B's fixed states.

    One task per layer on ``workers`` processes (analyze/pool.py).
    """
    return pd.DataFrame(run_tasks(cross_readout_tasks(store_a, store_b, layers=layers, lens_tokens=lens_tokens,
                                                      seed=seed, chunk_mib=chunk_mib), workers))


def cross_readout_tasks(store_a: str, store_b: str, *, layers: list[int] | None = None, lens_tokens: int = 20000,
                        seed: int = 0, chunk_mib: int = 256) -> list:
    """The checks (identical token streams, complete stores, lenses of one shape), then one task per layer."""
    a, b = Store.open(store_a), Store.open(store_b)
    ta, tb = a.tokens(), b.tokens()
    if not all(np.array_equal(ta[k], tb[k]) for k in ta):
        raise InputError(f"{store_a} and {store_b} hold different token streams; cross-readout needs identical tokens")
    if not (a.complete and b.complete):
        raise InputError("cross-readout needs two complete stores; finish them with `spinal capture … --resume`")
    layers = layers or [l for l in a.layers if l in b.layers]
    lens_a, lens_b = a.lens(), b.lens()
    if lens_a.vocab != lens_b.vocab or lens_a.dim != lens_b.dim:
        raise InputError(f"lens shapes differ ({lens_a.vocab}×{lens_a.dim} vs {lens_b.vocab}×{lens_b.dim})")
    same_lens = _same_lens(a, b)
    sub = token_subsample(a, lens_tokens, seed)
    rows = np.flatnonzero(ta["sequence"] >= 0) if sub is None else sub  # flat token indices, sorted
    bins = position_bins(relative_positions(ta["sequence"], ta["position"]))[rows]  # the depth × position map
    return [(cross_readout_layer, dict(store_a=store_a, store_b=store_b, layer=l, rows=rows, chunk_mib=chunk_mib,
                                       same_lens=same_lens, bins=bins)) for l in layers]


def _same_lens(a: Store, b: Store) -> bool:
    """Both stores carry the same readout (norm and unembedding bit for bit: e.g. an adapter that leaves the head
    alone), so lens_B(h_B) = lens_A(h_B) and the readout change is exactly 0."""
    if a.group["lens"].attrs.asdict() != b.group["lens"].attrs.asdict():
        return False
    names = sorted(k for k, _ in a.group["lens"].arrays())
    if names != sorted(k for k, _ in b.group["lens"].arrays()):
        return False
    return all(np.array_equal(a.group["lens"][k][...], b.group["lens"][k][...]) for k in names)


@torch.no_grad()
def cross_readout_layer(store_a: str, store_b: str, layer: int, rows: np.ndarray, chunk_mib: int,
                        same_lens: bool = False, bins: np.ndarray | None = None) -> dict:
    """One layer of ``cross_readout``: three readouts per token (two when the lenses are the same). With ``bins``
    (a position bin per row) also the mean total distance per bin: ``fr_total_by_bin``, ``tokens_by_bin``."""
    a, b = Store.open(store_a), Store.open(store_b)
    lens_a = a.lens()
    lens_b = lens_a if same_lens else b.lens()
    ia, ib = a.layer_index(layer), b.layer_index(layer)
    chunk = lens_a.chunk_tokens(chunk_mib, 4)  # four (chunk, vocab) float32 live at once
    sums = np.zeros(3)
    nb = len(EDGES)
    by_bin, n_bin = np.zeros(nb), np.zeros(nb)
    for start in range(0, rows.size, chunk):
        idx = rows[start : start + chunk]
        ha, hb = torch.from_numpy(read_rows(a, ia, idx)), torch.from_numpy(read_rows(b, ib, idx))
        pa_a, pa_b = lens_a.log_probs(ha), lens_a.log_probs(hb)  # (chunk, vocab)
        rep = fisher_rao(pa_a, pa_b)  # (chunk,)
        fr_rep = float(rep.sum())
        if same_lens:
            total = rep
            sums += [fr_rep, fr_rep, 0.0]
        else:
            pb_b = lens_b.log_probs(hb)
            total = fisher_rao(pa_a, pb_b)
            sums += [float(total.sum()), fr_rep, float(fisher_rao(pa_b, pb_b).sum())]
        if bins is not None:
            bi = bins[start : start + chunk]
            ok = bi >= 0
            by_bin += np.bincount(bi[ok], total.double().numpy()[ok], minlength=nb)
            n_bin += np.bincount(bi[ok], minlength=nb)
    out = {"layer": layer, **dict(zip(("fr_total", "fr_representation", "fr_readout"), sums / rows.size)),
           "tokens": int(rows.size)}
    if bins is not None:
        with np.errstate(invalid="ignore"):
            out["fr_total_by_bin"] = (by_bin / n_bin).tolist()
        out["tokens_by_bin"] = n_bin.astype(int).tolist()
    return out
