"""Capture one work unit: its sequences through the model in batches, each stored position put in its block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from spinal.capture.hooks import Recorder
from spinal.capture.tokens import Tokenized
from spinal.errors import IntegrityError
from spinal.store.layout import TokenLayout, Unit
from spinal.store.contract import storage_dtype


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
        the page faults of fresh memory, which cost a capture of a small model about 4 % of its time. On a GPU it is
        pinned host memory, which the hooks copy into on side streams (``Recorder``): the host waits for them once, at
        the end of the unit, and checks the GPU-side finiteness flags of all its batches in one transfer.
        """
        n_tok = unit.token_stop - unit.token_start
        device = input_device(self.model)
        if buffer is None or buffer.shape[1] < n_tok:
            buffer = self.new_buffer(n_tok)
        side_copies = device.type == "cuda" and _is_pinned(buffer)
        flags: list[tuple[list[int], int, torch.Tensor, torch.Tensor]] = []  # (batch, layer, rows, finite) per side copy
        block = buffer[:, :n_tok]  # (layer, token, dim); each layer's rows stay contiguous
        valid = self.layout.stored_tokens(unit)  # the unit's sequences fill its first rows, padding follows
        block[:, valid:] = 0
        seqs = list(range(unit.seq_start, unit.seq_stop))
        stored = torch.from_numpy(block)
        if self.dtype == "bfloat16":
            stored = stored.view(torch.bfloat16)  # the block holds bf16's raw bits (uint16)
        for b in range(0, len(seqs), self.batch_size):
            batch = seqs[b : b + self.batch_size]
            ids, mask, flat = batch_inputs(self.tokd, batch, self.tokenizer, device)
            # a batch's sequences are consecutive in the unit, each one's stored tokens contiguous from its offset
            # (spinal.store.layout.plan_layout): its rows are one slice of the block, which the hooks gather into
            start = int(self.layout.offsets[batch[0]]) - unit.token_start
            stop = start + flat.numel()
            assert stop == int(self.layout.offsets[batch[-1]] + self.layout.lengths[batch[-1]]) - unit.token_start
            rows = {layer: stored[li, start:stop] for li, layer in enumerate(self.layers)}
            rec.gather(flat, into=rows, pinned=side_copies)
            # The base model only: hidden states need no logits, so the (vocab × dim) head is skipped.
            self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            flags += [(batch, layer, rows[layer], ok) for layer, ok in rec.finite_flags]
            rest = {layer: dest for layer, dest in rows.items() if rec.out[layer] is not dest or not side_copies}
            if rest and device.type == "cuda":
                for d in range(torch.cuda.device_count()):  # every shard's device, under a device map
                    torch.cuda.synchronize(d)  # the non-blocking copies to freshly pinned host memory have landed
            for layer, dest in rest.items():
                h = rec.out[layer]  # (token, dim)
                if not _all_finite(h):
                    self._refuse_non_finite(unit, batch, layer, h)
                if h is not dest:  # from a GPU (pinned host memory), or in another dtype (copy_ casts)
                    dest.copy_(h)
        if side_copies:
            rec.wait()  # every side copy of this unit is in the block
            self._check_flags(unit, flags)
        return block

    def _check_flags(self, unit: Unit, flags: list) -> None:
        """The side copies' finiteness flags, one transfer per device; the first non-finite row is named."""
        by_device: dict[torch.device, list[int]] = {}
        for i, (*_, ok) in enumerate(flags):
            by_device.setdefault(ok.device, []).append(i)
        for idx in by_device.values():
            oks = torch.stack([flags[i][3] for i in idx]).cpu()
            if not bool(oks.all()):
                batch, layer, rows, _ = flags[idx[int(torch.nonzero(~oks)[0, 0])]]
                self._refuse_non_finite(unit, batch, layer, rows)  # rows: the batch's landed host copy

    def new_buffer(self, tokens: int | None = None) -> np.ndarray:
        """A (layer, tokens, dim) block for ``block`` to fill; by default as large as the largest unit."""
        tokens = tokens or max(u.token_stop - u.token_start for u in self.layout.units)
        shape, dtype = (len(self.layers), tokens, self.dim), np.dtype(storage_dtype(self.dtype))
        if input_device(self.model).type == "cuda":  # pinned: the hooks' side-stream copies land here directly
            raw = torch.zeros(int(np.prod(shape)) * dtype.itemsize, dtype=torch.uint8, pin_memory=True)
            return raw.numpy().view(dtype).reshape(shape)  # the array keeps the pinned tensor alive
        return np.zeros(shape, dtype=dtype)

    def _refuse_non_finite(self, unit: Unit, batch: list[int], layer: int, h: torch.Tensor) -> NoReturn:
        row = int(torch.nonzero(~torch.isfinite(h).all(-1))[0, 0])
        s, p = _token_owner(batch, self.tokd, row)
        raise IntegrityError(
            f"non-finite activation at layer {layer}, prompt {self.prompt_ids[s]!r} position {p} "
            f"(unit {unit.index}); nothing was written for this unit. Try --dtype float32"
        )


def _is_pinned(buffer: np.ndarray) -> bool:
    """Whether ``buffer`` lies in page-locked host memory (a ``new_buffer`` made for a GPU model)."""
    try:
        return torch.from_numpy(buffer).is_pinned()
    except RuntimeError:  # no CUDA runtime
        return False


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
