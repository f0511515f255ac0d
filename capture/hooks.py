"""Forward hooks that gather the selected tokens of each stored layer's residual stream during one forward pass.

Layer 0 is the input of block 1 (the embedding output, after any embedding scaling);
layer ℓ ≥ 1 is block ℓ's output, before the final norm (docs/method.md §1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from spinal.errors import ModelError


class Recorder:
    """Registers hooks on the blocks; ``gather(flat_index)`` arms them for the next forward pass.

    Each hook keeps only the selected tokens: ``h.reshape(-1, dim)[flat_index]`` on the
    block's own device. On CPU, given ``into`` (per layer, a (token, dim) tensor: a view of the unit's
    block), the selected rows are gathered straight into it: no copy of their own. On GPU, given
    ``into`` in pinned host memory (``pinned=True``), the rows are copied into it on a side stream per
    device, which waits only for the layer's own kernels: the copy overlaps the next layers and the next
    batch, and the GPU never waits for the host. Their finiteness is reduced on the GPU
    (``finite_flags``), so nothing synchronizes before ``wait()`` at the end of a unit. Otherwise the
    rows go to freshly pinned host memory with a non-blocking copy on the current stream.
    """

    def __init__(self, blocks: nn.ModuleList, layers: Sequence[int], dim: int, arch: str):
        self.blocks, self.layers, self.dim, self.arch = blocks, list(layers), dim, arch
        self.out: dict[int, torch.Tensor] = {}
        self._index: torch.Tensor | None = None
        self._index_on: dict[torch.device, torch.Tensor] = {}
        self._into: dict[int, torch.Tensor] = {}
        self._pinned = False
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self.finite_flags: list[tuple[int, torch.Tensor]] = []  # (layer, 0-dim bool on its device) per side copy
        self._handles = []
        wanted = set(self.layers)
        if 0 in wanted:
            self._handles.append(blocks[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for i, block in enumerate(blocks, start=1):
            if i in wanted:
                self._handles.append(block.register_forward_hook(self._make_hook(i)))

    def gather(self, flat_index: torch.Tensor, into: dict[int, torch.Tensor] | None = None,
               pinned: bool = False) -> None:
        """Arm the hooks for one forward pass; ``pinned``: ``into`` lies in pinned host memory (GPU side copies)."""
        self.out = {}
        self._index = flat_index
        self._index_on = {}
        self._into = into or {}
        self._pinned = pinned
        self.finite_flags = []

    def wait(self) -> None:
        """Block until every side-stream copy has landed in host memory."""
        for stream in self._streams.values():
            stream.synchronize()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- hooks -----------------------------------------------------------------------------

    def _pre_hook(self, module, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        self._keep(0, h)

    def _make_hook(self, layer: int):
        def hook(module, args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output  # tensor or tuple
            self._keep(layer, h)

        return hook

    def _keep(self, layer: int, h) -> None:
        if self._index is None:
            return
        if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[-1] != self.dim:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ModelError(
                f"{self.arch}: layer {layer} hidden state has shape {shape}; expected (batch, seq, {self.dim})"
            )
        idx = self._index_on.get(h.device)
        if idx is None:
            idx = self._index_on[h.device] = self._index.to(h.device, non_blocking=True)
        flat = h.reshape(-1, self.dim)
        dest = self._into.get(layer)
        if dest is not None and flat.device.type == "cpu" and dest.dtype == flat.dtype:
            self.out[layer] = torch.index_select(flat, 0, idx, out=dest)  # (token, dim), into the unit's block
            return
        sel = flat.index_select(0, idx)  # (token, dim) selected positions only
        if dest is not None and self._pinned and sel.device.type == "cuda" and dest.dtype == sel.dtype:
            self.finite_flags.append((layer, torch.isfinite(sel).all()))
            side = self._streams.get(sel.device)
            if side is None:
                side = self._streams[sel.device] = torch.cuda.Stream(sel.device)
            side.wait_stream(torch.cuda.current_stream(sel.device))  # sel (and its flag) are computed
            with torch.cuda.stream(side):
                dest.copy_(sel, non_blocking=True)
            sel.record_stream(side)  # the allocator keeps sel's memory until the side copy is done
            self.out[layer] = dest
            return
        if sel.device.type != "cpu":
            host = torch.empty(sel.shape, dtype=sel.dtype, pin_memory=True)
            host.copy_(sel, non_blocking=True)
            sel = host
        self.out[layer] = sel
