"""GGUF files as inputs: recognised by their header, their config and quantization read without loading them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from spinal.errors import InputError, ModelError, first_line

MAGIC = b"GGUF"


def is_gguf(path: str | Path) -> bool:
    """A file (not a folder) whose first four bytes are GGUF's magic."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    with p.open("rb") as f:
        return f.read(4) == MAGIC


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise InputError(f"{path} is a GGUF file; reading it needs the gguf package: pip install gguf") from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise ModelError(f"{path} is not a readable GGUF file ({first_line(e, typed=True)}); re-download it") from None


def quantization(path: str | Path) -> dict:
    """What the file holds: its tensors' storage types (e.g. {'Q4_1': 210, 'F32': 61}) and its size."""
    p = Path(path)
    types = Counter(t.tensor_type.name for t in _reader(p).tensors)
    return {"format": "gguf", "file": p.name, "bytes": p.stat().st_size, "tensor_types": dict(types.most_common()),
            "dequantized": "by transformers at load (GGUF dequantization), then computed in the capture dtype"}


def gguf_config(path: str | Path) -> dict:
    """The Hugging Face config a GGUF file describes (model_type, sizes, …), read from its metadata only."""
    p = Path(path)
    _reader(p)  # a clear error for a torn file or a missing package before transformers' own
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        cfg = load_gguf_checkpoint(str(p), return_tensors=False)["config"]
    except Exception as e:
        raise ModelError(f"{p}: transformers cannot read this GGUF's architecture ({first_line(e, typed=True)})") from None
    cfg.pop("_model_name_or_path", None)
    return cfg
