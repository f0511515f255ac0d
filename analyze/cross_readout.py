"""Cross-readout lens: read checkpoint B's hidden states with A's lens (and vice versa) to split "representation moved"
from "readout moved" per layer (METHOD.md §4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from spinal.analyze.lens_pass import token_subsample
from spinal.analyze.transport import fisher_rao
from spinal.errors import InputError
from spinal.store import Store, decode


@torch.no_grad()
def cross_readout(store_a: str, store_b: str, *, layers: list[int] | None = None, lens_tokens: int = 20000,
                  seed: int = 0, chunk_mib: int = 256) -> pd.DataFrame:
    """Per layer, mean Fisher–Rao distances over (a seeded subsample of) the shared tokens:

    - ``fr_total``: FR(lens_A(h_A), lens_B(h_B)), how much the layer's readout distribution changed;
    - ``fr_representation``: FR(lens_A(h_A), lens_A(h_B)), the change seen through A's fixed readout;
    - ``fr_readout``: FR(lens_A(h_B), lens_B(h_B)), the change of readout on B's fixed states.
    """
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
    sub = token_subsample(a, lens_tokens, seed)
    rows = np.flatnonzero(ta["sequence"] >= 0) if sub is None else sub  # flat token indices, sorted
    chunk = max(1, (chunk_mib << 20) // (4 * lens_a.vocab * 4))  # four (chunk, vocab) float32 live at once
    out = []
    for layer in layers:
        ia, ib = a.layer_index(layer), b.layer_index(layer)
        sums = np.zeros(3)
        for start in range(0, rows.size, chunk):
            idx = rows[start : start + chunk]
            ha = torch.from_numpy(decode(np.asarray(a.hidden.get_orthogonal_selection((ia, idx, slice(None)))), a.dtype))
            hb = torch.from_numpy(decode(np.asarray(b.hidden.get_orthogonal_selection((ib, idx, slice(None)))), b.dtype))
            pa_a, pa_b, pb_b = lens_a.log_probs(ha), lens_a.log_probs(hb), lens_b.log_probs(hb)  # (chunk, vocab)
            sums += [float(fisher_rao(pa_a, pb_b).sum()), float(fisher_rao(pa_a, pa_b).sum()),
                     float(fisher_rao(pa_b, pb_b).sum())]
        out.append({"layer": layer, **dict(zip(("fr_total", "fr_representation", "fr_readout"), sums / rows.size)),
                    "tokens": int(rows.size)})
    return pd.DataFrame(out)
