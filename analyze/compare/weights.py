"""Per-block squared parameter change ‖θ_B − θ_A‖², streamed tensor by tensor from two safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinal.blocks import block_index, numbered_prefixes, pick
from spinal.errors import InputError



def _tensor_index(folder: Path) -> dict[str, Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} has no *.safetensors files; gradient concentration needs safetensors weights")
    from safetensors import safe_open

    index = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                index[k] = f
    return index


def block_sq_change(a: str | Path, b: str | Path, n_blocks: int) -> np.ndarray:
    """(n_blocks,) Σ over each block's tensors of ‖θ_b − θ_a‖², in float64; one tensor in memory at a time."""
    from safetensors import safe_open

    ia, ib = _tensor_index(Path(a)), _tensor_index(Path(b))
    if set(ia) != set(ib):
        diff = sorted(set(ia) ^ set(ib))[:3]
        raise InputError(f"{a} and {b} hold different tensors (e.g. {diff}); not checkpoints of one model")
    prefix = pick(numbered_prefixes(sorted(ia)), n_blocks)  # the block-list rule, on tensor names
    if prefix is None:
        counts = sorted({n for _, n in numbered_prefixes(ia)}) or [0]
        raise InputError(f"{a}: no tensors of {n_blocks} numbered blocks (e.g. model.layers.<i>.…) in its safetensors "
                         f"(numbered groups found: {counts}); not a checkpoint of the traced model")
    out = np.zeros(n_blocks)
    for name in sorted(ia):
        blk = block_index(name, prefix)
        if blk is None:
            continue  # embeddings, final norm, head: not a block
        with safe_open(str(ia[name]), framework="pt") as fa, safe_open(str(ib[name]), framework="pt") as fb:
            ta, tb = fa.get_tensor(name).double(), fb.get_tensor(name).double()  # float64: exact squares of bf16 deltas
        if ta.shape != tb.shape:
            raise InputError(f"{name}: shape {tuple(ta.shape)} in {a}, {tuple(tb.shape)} in {b}")
        out[blk] += float(((tb - ta) ** 2).sum())
    return out
