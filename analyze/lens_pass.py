"""One pass of the logit lens over a range of work units: per-layer transport (L, Hellinger, JS), entropy, KL to final.

Tokens are processed in chunks sized so a chunk × vocab float32 matrix stays inside a memory
budget (METHOD.md §3, "Cost"); no token × vocab matrix for the whole store ever exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spinal.analyze.transport import fisher_rao, jensen_shannon, kl
from spinal.store import Store, decode


@dataclass
class LensPartial:
    """Sums and per-token values of one unit range; ``merge`` concatenates in unit order."""

    layers: list[int]
    steps_L: list[np.ndarray]  # per step ℓ→ℓ+1: per-token L (token,) float32
    sums: dict[str, np.ndarray]  # name -> (layer,) sums: hellinger, js (per step), entropy, kl_final
    chord: np.ndarray  # per-token FR(p_first, p_last) (token,)
    seq: np.ndarray  # (token,) sequence of each processed token
    n: int
    n_companion: int  # tokens behind the companion sums (hellinger: all n)

    def merge(self, other: "LensPartial") -> "LensPartial":
        return LensPartial(
            self.layers,
            [np.concatenate([a, b]) for a, b in zip(self.steps_L, other.steps_L)],
            {k: self.sums[k] + other.sums[k] for k in self.sums},
            np.concatenate([self.chord, other.chord]),
            np.concatenate([self.seq, other.seq]),
            self.n + other.n,
            self.n_companion + other.n_companion,
        )


def _entropy(logp: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """−Σ p log p per token from log p and √p (p = √p², no second exp); 0·log 0 = 0."""
    terms = (root * root) * logp
    return -torch.where(torch.isneginf(logp), torch.zeros_like(terms), terms).sum(dim=-1)


def token_subsample(store: Store, n: int, seed: int, within: np.ndarray | None = None, purpose: int = 3
                    ) -> np.ndarray | None:
    """A seeded, sorted subset of n valid tokens (flat indices; of ``within`` if given), or None for all of them."""
    if within is None:
        seq = store.group["tokens/sequence"][:]
        within = np.flatnonzero(seq >= 0)
    if n <= 0 or n >= within.size:
        return None
    rng = np.random.default_rng([seed, purpose])
    return np.sort(rng.choice(within, size=n, replace=False))


@torch.no_grad()
def lens_pass(store_path: str, units: list[int], layers: list[int], *, chunk_mib: int,
              subsample: np.ndarray | None, companions: np.ndarray | None = None) -> LensPartial:
    """``subsample``: flat token indices for L (None: all); ``companions``: those of them for JS/KL/entropy."""
    store = Store.open(store_path)
    lens = store.lens()
    li = [store.layer_index(l) for l in layers]
    seq_all = store.group["tokens/sequence"][:]
    chunk = max(1, (chunk_mib << 20) // (4 * lens.vocab * 3))  # three (chunk, vocab) float32 live at once
    n_steps = len(layers) - 1
    steps = [[] for _ in range(n_steps)]
    sums = {k: np.zeros(len(layers)) for k in ("hellinger", "js", "entropy", "kl_final")}
    chords, seqs, n, n_comp = [], [], 0, 0
    all_units = store.units
    for ui in units:
        u = all_units[ui]
        keep = seq_all[u.token_start : u.token_stop] >= 0
        if subsample is not None:
            in_unit = subsample[(subsample >= u.token_start) & (subsample < u.token_stop)] - u.token_start
            keep = np.zeros_like(keep)
            keep[in_unit] = True
        if not keep.any():
            continue
        rows = np.flatnonzero(keep)
        if companions is None:
            comp_rows = np.ones(rows.size, dtype=bool)
        else:
            comp_rows = np.isin(rows + u.token_start, companions)
        block = np.stack([decode(np.asarray(store.hidden[i, u.token_start : u.token_stop, :])[rows], store.dtype)
                          for i in li])  # (layer, token, dim) float32
        seqs.append(seq_all[u.token_start : u.token_stop][rows])
        n += rows.size
        for a in range(0, rows.size, chunk):
            h = torch.from_numpy(block[:, a : a + chunk])  # (layer, chunk, dim)
            c = torch.from_numpy(np.flatnonzero(comp_rows[a : a + chunk]))  # companion rows of this chunk
            n_comp += int(c.numel())
            final = lens.log_probs(h[-1])  # (chunk, vocab)
            final_c = final.index_select(0, c)
            prev = lens.log_probs(h[0])
            first = prev
            root_prev = torch.exp(0.5 * prev)  # √p, reused by the next step (METHOD.md §3: √p = exp(½ log p))
            sums["entropy"][0] += float(_entropy(prev, root_prev).index_select(0, c).sum())
            sums["kl_final"][0] += float(kl(final_c, prev.index_select(0, c)).sum())
            for j in range(1, len(layers)):
                cur = final if j == len(layers) - 1 else lens.log_probs(h[j])
                root = torch.exp(0.5 * cur)
                chord = torch.linalg.vector_norm(root_prev - root, dim=-1)  # ‖√p − √q‖₂ (token,)
                steps[j - 1].append((4 * torch.asin((chord / 2).clamp(0.0, 1.0))).clamp(0.0, math.pi).numpy())
                sums["hellinger"][j - 1] += float((chord / math.sqrt(2.0)).sum())
                cur_c = cur.index_select(0, c)
                sums["js"][j - 1] += float(jensen_shannon(prev.index_select(0, c), cur_c).sum())
                sums["entropy"][j] += float(_entropy(cur, root).index_select(0, c).sum())
                sums["kl_final"][j] += float(kl(final_c, cur_c).sum())
                prev, root_prev = cur, root
            chords.append(fisher_rao(first, final).numpy())
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.float32)  # noqa: E731
    return LensPartial(layers, [cat(s) for s in steps], sums, cat(chords),
                       cat(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64), n, n_comp)
