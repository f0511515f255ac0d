"""Capture one work unit: its sequences through the model in batches, each stored position put in its block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from spinal.capture.hooks import Recorder
from spinal.capture.tokens import Tokenized
from spinal.errors import IntegrityError
from spinal.layout import TokenLayout, Unit
from spinal.store import storage_dtype


@dataclass(frozen=True)
class UnitCapture:
    """Everything capturing any unit of one store needs; the token layout is the one planned in memory."""

    model: torch.nn.Module
    tokenizer: object  # a Hugging Face tokenizer: only its pad and eos token ids are read
    tokd: Tokenized
    layout: TokenLayout
    prompt_ids: tuple[str, ...]  # per sequence, to name the prompt of a non-finite activation
    layers: tuple[int, ...]  # the stored layers, in the store's order
    dim: int
    dtype: str  # the model's real dtype (the block holds its storage dtype)
    batch_size: int

    @torch.no_grad()
    def block(self, unit: Unit, rec: Recorder, buffer: np.ndarray | None = None) -> np.ndarray:
        """Run a unit's sequences in batches; returns its (layer, unit tokens, dim) block in storage dtype.

        ``buffer``: an array from ``new_buffer`` to fill (a view of its first tokens is returned). Reusing one saves
        the page faults of fresh memory, which cost a capture of a small model about 4 % of its time.
        """
        n_tok = unit.token_stop - unit.token_start
        if buffer is None or buffer.shape[1] < n_tok:
            buffer = self.new_buffer(n_tok)
        block = buffer[:, :n_tok]  # (layer, token, dim); each layer's rows stay contiguous
        valid = self.layout.stored_tokens(unit)  # the unit's sequences fill its first rows, padding follows
        block[:, valid:] = 0
        device = input_device(self.model)
        seqs = list(range(unit.seq_start, unit.seq_stop))
        stored = torch.from_numpy(block)
        if self.dtype == "bfloat16":
            stored = stored.view(torch.bfloat16)  # the block holds bf16's raw bits (uint16)
        for b in range(0, len(seqs), self.batch_size):
            batch = seqs[b : b + self.batch_size]
            ids, mask, flat = batch_inputs(self.tokd, batch, self.tokenizer, device)
            # a batch's sequences are consecutive in the unit, each one's stored tokens contiguous from its offset
            # (spinal.layout.plan_layout): its rows are one slice of the block, which the hooks gather into
            start = int(self.layout.offsets[batch[0]]) - unit.token_start
            stop = start + flat.numel()
            assert stop == int(self.layout.offsets[batch[-1]] + self.layout.lengths[batch[-1]]) - unit.token_start
            rows = {layer: stored[li, start:stop] for li, layer in enumerate(self.layers)}
            rec.gather(flat, into=rows)
            # The base model only: hidden states need no logits, so the (vocab × dim) head is skipped.
            self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            if device.type == "cuda":
                torch.cuda.current_stream().synchronize()  # pinned host copies have landed
            for layer, dest in rows.items():
                h = rec.out[layer]  # (token, dim)
                if not _all_finite(h):
                    self._refuse_non_finite(unit, batch, layer, h)
                if h is not dest:  # from a GPU (pinned host memory), or in another dtype (copy_ casts)
                    dest.copy_(h)
        return block

    def new_buffer(self, tokens: int | None = None) -> np.ndarray:
        """A (layer, tokens, dim) block for ``block`` to fill; by default as large as the largest unit."""
        tokens = tokens or max(u.token_stop - u.token_start for u in self.layout.units)
        return np.zeros((len(self.layers), tokens, self.dim), dtype=storage_dtype(self.dtype))

    def _refuse_non_finite(self, unit: Unit, batch: list[int], layer: int, h: torch.Tensor) -> NoReturn:
        row = int(torch.nonzero(~torch.isfinite(h).all(-1))[0, 0])
        s, p = _token_owner(batch, self.tokd, row)
        raise IntegrityError(
            f"non-finite activation at layer {layer}, prompt {self.prompt_ids[s]!r} position {p} "
            f"(unit {unit.index}); nothing was written for this unit. Try --dtype float32"
        )


def _all_finite(h: torch.Tensor) -> bool:
    """No NaN or ±inf in ``h``: its sum is finite then (one fast pass); an infinite sum of finite values (overflow)
    is told apart by the exact element-wise check."""
    return bool(torch.isfinite(h.sum())) or bool(torch.isfinite(h).all())


def _token_owner(batch: list[int], tokd: Tokenized, flat_row: int) -> tuple[int, int]:
    """(sequence, position) of row ``flat_row`` of a batch's gathered tokens."""
    for s in batch:
        n = len(tokd.positions[s])
        if flat_row < n:
            return s, tokd.positions[s][flat_row]
        flat_row -= n
    return batch[-1], -1


def batch_inputs(tokd: Tokenized, seqs: list[int], tok, device: torch.device):
    """Right-padded (batch, seq) ids and mask, and the flat indices of the stored positions."""
    width = max(len(tokd.input_ids[s]) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    flat = []
    for r, s in enumerate(seqs):
        x = tokd.input_ids[s]
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
        flat.extend(r * width + p for p in tokd.positions[s])
    return ids.to(device), mask.to(device), torch.tensor(flat, dtype=torch.long)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model's input ids go: its input embedding's device (the first shard under a device map)."""
    return model.get_input_embeddings().weight.device
