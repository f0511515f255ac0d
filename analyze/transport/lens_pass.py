"""One pass of the logit lens over a range of tokens: per-layer transport (L, Hellinger, JS), entropy, KL to final.

Tokens are processed in chunks sized so a chunk × vocab float32 matrix stays inside a memory
budget (docs/method.md §3, "Cost"); no token × vocab matrix for the whole store ever exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spinal.analyze.seeds import Purpose, rng
from spinal.analyze.transport.distances import entropy, fisher_rao_from_chord, jensen_shannon, kl
from spinal.lens import Lens
from spinal.store.contract import Store, decode


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


def token_subsample(store: Store, n: int, seed: int, within: np.ndarray | None = None,
                    purpose: Purpose = Purpose.LENS_TOKENS) -> np.ndarray | None:
    """A seeded, sorted subset of n valid tokens (flat indices; of ``within`` if given), or None for all of them."""
    if within is None:
        seq = store.group["tokens/sequence"][:]
        within = np.flatnonzero(seq >= 0)
    if n <= 0 or n >= within.size:
        return None
    return np.sort(rng(seed, purpose).choice(within, size=n, replace=False))


def extension_order(store: Store, pilot: np.ndarray, seed: int) -> np.ndarray:
    """The valid tokens outside the pilot subsample in one seeded order: a larger lens subsample is the pilot plus
    a prefix of it, so subsamples are nested across sizes and identical across checkpoints of one token stream."""
    valid = np.flatnonzero(store.group["tokens/sequence"][:] >= 0)
    return rng(seed, Purpose.LENS_EXTENSION).permutation(np.setdiff1d(valid, pilot, assume_unique=True))


@dataclass(frozen=True)
class ChunkTransport:
    """Transport of one chunk of k tokens through all layers."""

    steps_L: list[np.ndarray]  # per step ℓ→ℓ+1: L per token (k,) float32
    chord: np.ndarray  # FR(p_first, p_last) per token (k,)
    sums: dict[str, np.ndarray]  # hellinger, js (per step; all tokens / companions), entropy, kl_final (per layer)


@torch.no_grad()
def transport_chunk(lens: Lens, h: torch.Tensor, companions: torch.Tensor, bufs: list[torch.Tensor]
                    ) -> ChunkTransport:
    """Pure maths of the pass: h (layer, k, dim), companion rows (c,), three (k, vocab) float32 scratch buffers.

    One lens readout per layer, as √p in a scratch buffer (``Lens.sqrt_probs``); the step chord
    ``‖√p − √q‖₂`` is taken in place in the earlier layer's buffer, which then takes the next
    readout. The final layer is read first (KL to final needs it) and kept. Companions (JS, KL to
    final, entropy) use log p on their rows only.
    """
    n_layers = h.shape[0]
    sums = {key: np.zeros(n_layers) for key in ("hellinger", "js", "entropy", "kl_final")}
    final, final_c = lens.sqrt_probs(h[-1], out=bufs[0], rows=companions)
    prev, prev_c = lens.sqrt_probs(h[0], out=bufs[1], rows=companions)
    spare = bufs[2]
    chord_ends = fisher_rao_from_chord(torch.linalg.vector_norm(torch.sub(prev, final, out=spare), dim=-1))
    sums["entropy"][0] = float(entropy(prev_c).sum())
    sums["kl_final"][0] = float(kl(final_c, prev_c).sum())
    steps = []
    for j in range(1, n_layers):
        if j == n_layers - 1:
            cur, cur_c = final, final_c
        else:
            cur, cur_c = lens.sqrt_probs(h[j], out=spare, rows=companions)
        chord = torch.linalg.vector_norm(prev.sub_(cur), dim=-1)  # ‖√p − √q‖₂ (k,); prev is spent
        steps.append(fisher_rao_from_chord(chord).numpy())
        sums["hellinger"][j - 1] = float((chord / math.sqrt(2.0)).sum())
        sums["js"][j - 1] = float(jensen_shannon(prev_c, cur_c).sum())
        sums["entropy"][j] = float(entropy(cur_c).sum())
        sums["kl_final"][j] = float(kl(final_c, cur_c).sum())
        spare, prev, prev_c = prev, cur, cur_c
    return ChunkTransport(steps, chord_ends.numpy(), sums)


def selected_tokens(store: Store, subsample: np.ndarray | None) -> np.ndarray:
    """Flat indices of the tokens a lens pass reads: the subsample, or every valid token."""
    if subsample is not None:
        return subsample
    return np.flatnonzero(store.group["tokens/sequence"][:] >= 0)


def token_ranges(selected: np.ndarray, pieces: int) -> list[tuple[int, int]]:
    """Flat token ranges, in order, each holding an equal share of ``selected`` (one lens task each).

    Split by tokens, not work units: a store captured as one unit still spreads over every worker.
    """
    parts = [p for p in np.array_split(selected, min(max(1, pieces), max(1, selected.size))) if p.size]
    if not parts:
        return [(0, 0)]
    bounds = [int(p[0]) for p in parts] + [int(parts[-1][-1]) + 1]
    return list(zip(bounds[:-1], bounds[1:]))


def read_rows(store: Store, layer_index: int, rows: np.ndarray) -> np.ndarray:
    """(k, dim) float32 activations of one layer at flat token indices ``rows`` (sorted), touching only their chunks."""
    if rows[-1] - rows[0] + 1 == rows.size:
        raw = store.hidden[layer_index, int(rows[0]) : int(rows[-1]) + 1, :]
    else:
        raw = store.hidden.oindex[layer_index, rows, :]
    return decode(np.asarray(raw), store.dtype)


@torch.no_grad()
def lens_pass(store_path: str, token_range: tuple[int, int], layers: list[int], *, chunk_mib: int,
              subsample: np.ndarray | None, companions: np.ndarray | None = None) -> LensPartial:
    """The lens over the selected tokens with flat index in ``token_range`` = [lo, hi).

    ``subsample``: flat token indices for L (None: every valid token); ``companions``: those of them
    for JS/KL/entropy (None: all). Tokens are read and transported ``chunk`` at a time, so memory is
    bounded by ``chunk_mib`` whatever the range.
    """
    store = Store.open(store_path)
    lens = store.lens()
    li = [store.layer_index(l) for l in layers]
    lo, hi = token_range
    seq_all = store.group["tokens/sequence"][:]
    if subsample is None:
        rows_all = lo + np.flatnonzero(seq_all[lo:hi] >= 0)
    else:
        rows_all = subsample[(subsample >= lo) & (subsample < hi)]
    chunk = lens.chunk_tokens(chunk_mib, 3)  # three (chunk, vocab) float32 buffers, reused
    k = min(chunk, rows_all.size)
    bufs = [torch.empty(k, lens.vocab) for _ in range(3)] if k else []
    steps = [[] for _ in range(len(layers) - 1)]
    sums = {key: np.zeros(len(layers)) for key in ("hellinger", "js", "entropy", "kl_final")}
    chords, n_comp = [], 0
    for a in range(0, rows_all.size, chunk):
        rows = rows_all[a : a + chunk]
        h = torch.from_numpy(np.stack([read_rows(store, i, rows) for i in li]))  # (layer, k, dim)
        comp_rows = np.ones(rows.size, bool) if companions is None else np.isin(rows, companions)
        c = torch.from_numpy(np.flatnonzero(comp_rows))  # companion rows of this chunk
        n_comp += int(c.numel())
        part = transport_chunk(lens, h, c, [buf[: rows.size] for buf in bufs])
        for j, values in enumerate(part.steps_L):
            steps[j].append(values)
        for key, value in part.sums.items():
            sums[key] += value
        chords.append(part.chord)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.float32)  # noqa: E731
    return LensPartial(layers, [cat(s) for s in steps], sums, cat(chords),
                       seq_all[rows_all].astype(np.int64), int(rows_all.size), n_comp)
