"""The one dtype table: what each activation dtype is called, how it is stored, and how finely it rounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dtype:
    name: str  # canonical name, as stores and traces record it
    storage: str  # the numpy/zarr dtype its bits are stored in
    significand_bits: int  # p: round-to-nearest errs by at most 2^-p·|h| (docs/method.md §2, "Storage noise floor")
    captured: bool  # a dtype models compute in and stores hold (float64 only appears in analysis inputs)


# zarr-python 3.1 has no bfloat16: its 16 raw bits go in uint16 and the real dtype is named in the
# array's attributes (docs/store-format.md, "Lossless").
TABLE = {d.name: d for d in (
    Dtype("float32", "float32", 24, True),
    Dtype("bfloat16", "uint16", 8, True),
    Dtype("float16", "float16", 11, True),
    Dtype("float64", "float64", 53, False),
)}
CAPTURED = tuple(n for n, d in TABLE.items() if d.captured)  # float32, bfloat16, float16
ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
           "fp64": "float64", "double": "float64"}


def canonical(dtype: Any) -> str | None:
    """The canonical name of a torch dtype, numpy dtype, name or alias; None if it is not in the table."""
    if isinstance(dtype, str):
        name = dtype.lower()
    elif type(dtype).__module__ == "torch":  # torch.dtype, without importing torch here
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            return None
    name = ALIASES.get(name, name)
    return name if name in TABLE else None


def half_ulp(dtype: Any) -> float:
    """Half an ulp relative to |h|: 2^-p for a p-bit significand."""
    name = canonical(dtype)
    if name is None:
        raise ValueError(f"storage_dtype {dtype!r} unknown; expected one of {sorted(TABLE)}")
    return 2.0 ** -TABLE[name].significand_bits


def torch_dtype(name: str):
    """``torch.float32`` etc. for a captured dtype's name."""
    import torch

    if name not in CAPTURED:
        raise ValueError(f"dtype {name!r}; choose one of {', '.join(CAPTURED)}")
    return getattr(torch, name)
