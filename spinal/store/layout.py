"""The flat token axis planned up front: whole sequences packed into work units that own whole shards."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Unit:
    """A work unit: whole sequences [seq_start, seq_stop) owning tokens [token_start, token_stop)."""

    index: int
    seq_start: int
    seq_stop: int
    token_start: int
    token_stop: int


@dataclass(frozen=True)
class TokenLayout:
    """The flat token axis computed up front from the tokenized prompts."""

    t_chunk: int
    t_shard: int
    units: tuple[Unit, ...]
    ids: np.ndarray  # (token,) int32
    sequence: np.ndarray  # (token,) int32, −1 = padding
    position: np.ndarray  # (token,) int32
    offsets: np.ndarray  # (sequence,) int64, first stored token of each sequence
    lengths: np.ndarray  # (sequence,) int32, stored tokens per sequence
    seq_unit: np.ndarray  # (sequence,) int32

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])

    def stored_tokens(self, unit: Unit) -> int:
        """Stored (valid) tokens of ``unit``: its sequences' lengths, padding not counted."""
        return int(self.lengths[unit.seq_start : unit.seq_stop].sum())


def chunk_sizes(dim: int, itemsize: int, unit_tokens: int) -> tuple[int, int]:
    """(t_chunk, t_shard): ~1 MiB chunks (a good zstd/read unit), up to 8 chunks per shard.

    A shard never exceeds a work unit (rounded down to a power of two), so small units do not
    pad to huge shards.
    """
    target = 1 << 20
    t_chunk = 2 ** int(round(math.log2(max(1, target // (dim * itemsize)))))
    # The clamp binds only outside real models' widths: 4096 tokens at most for d ≤ 45 (float32) or 90 (bfloat16),
    # narrower than even the tests' d = 64, so a chunk spans at most half of a default 8192-token unit; 16 at least
    # from d = 21,846 (float32) or 43,691 (bfloat16), wider than any current model, so each chunk's fixed work (a
    # codec call, a crc32c, an index entry) stays spread over 16 rows or more.
    t_chunk = int(min(4096, max(16, t_chunk)))
    unit_pow2 = 2 ** int(math.floor(math.log2(max(1, unit_tokens))))
    t_shard = min(8 * t_chunk, max(unit_pow2, 1))
    return min(t_chunk, t_shard), t_shard


def plan_layout(
    token_ids: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    *,
    t_chunk: int,
    t_shard: int,
    unit_tokens: int,
) -> TokenLayout:
    """Pack whole sequences into units of about ``unit_tokens`` stored tokens, padded to whole shards.

    ``token_ids[s]`` are the ids at the stored ``positions[s]`` of sequence s.
    """
    if t_shard % t_chunk:
        raise ValueError(f"t_shard={t_shard} must be a multiple of t_chunk={t_chunk}")
    n_seq = len(token_ids)
    lengths = np.array([len(p) for p in positions], dtype=np.int32)
    units: list[Unit] = []
    seq_unit = np.zeros(n_seq, dtype=np.int32)
    offsets = np.zeros(n_seq, dtype=np.int64)
    s, tok = 0, 0
    while s < n_seq:
        start_s, start_t, used = s, tok, 0
        while s < n_seq and (used == 0 or used + lengths[s] <= max(unit_tokens, t_shard)):
            offsets[s] = tok + used
            seq_unit[s] = len(units)
            used += int(lengths[s])
            s += 1
        stop_t = start_t + max(t_shard, -(-used // t_shard) * t_shard)  # pad to whole shards
        units.append(Unit(len(units), start_s, s, start_t, stop_t))
        tok = stop_t
    ids = np.zeros(tok, dtype=np.int32)
    seq = np.full(tok, -1, dtype=np.int32)
    pos = np.full(tok, -1, dtype=np.int32)
    for i in range(n_seq):
        o, n = int(offsets[i]), int(lengths[i])
        ids[o : o + n] = np.asarray(token_ids[i], dtype=np.int32)
        seq[o : o + n] = i
        pos[o : o + n] = np.asarray(positions[i], dtype=np.int32)
    return TokenLayout(t_chunk, t_shard, tuple(units), ids, seq, pos, offsets, lengths, seq_unit)
