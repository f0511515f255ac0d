"""GGUF files as inputs: recognised by their header, their config and quantization read without loading them."""

from __future__ import annotations

import functools
from collections import Counter
from contextlib import contextmanager
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


_PARSED: dict = {}  # (resolved path, size, mtime) -> GGUFReader: the last file read, kept while it is unchanged


def _key(path) -> tuple:
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def parsed(path, mode: str = "r"):
    """One GGUFReader per unchanged file and process. Parsing a GGUF's metadata (SmolLM2's holds a 49,152-entry
    vocabulary as fields) takes ~6 s here, and loading one through transformers parses it three more times
    (config, tokenizer, weights) after our own check."""
    import gguf

    reader = _ORIGINAL.get("GGUFReader", gguf.GGUFReader)
    if mode != "r":
        return reader(path, mode)
    key = _key(path)
    if key not in _PARSED:
        _PARSED.clear()
        _PARSED[key] = reader(str(path))
    return _PARSED[key]


_ORIGINAL: dict = {}


@contextmanager
def parse_once():
    """Within the block, transformers' own GGUF reads (config, tokenizer, weights) reuse the one parse of each
    file, and its tensor-name map (rebuilt for every submodule: ~11 s for SmolLM2) is built once. Both are
    looked up in the gguf module at call time by transformers, so the block swaps them there and restores them."""
    import gguf

    if _ORIGINAL:  # already inside
        yield
        return
    _ORIGINAL.update(GGUFReader=gguf.GGUFReader, get_tensor_name_map=gguf.get_tensor_name_map)
    gguf.GGUFReader = parsed
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(_ORIGINAL["get_tensor_name_map"])
    try:
        yield
    finally:
        gguf.GGUFReader = _ORIGINAL["GGUFReader"]
        gguf.get_tensor_name_map = _ORIGINAL["get_tensor_name_map"]
        _ORIGINAL.clear()


def _reader(path: Path):
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"{path} is a GGUF file; reading it needs the gguf package: pip install gguf") from None
    try:
        return parsed(path)
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
        with parse_once():
            cfg = load_gguf_checkpoint(str(p), return_tensors=False)["config"]
    except Exception as e:
        raise ModelError(f"{p}: transformers cannot read this GGUF's architecture ({first_line(e, typed=True)})") from None
    cfg.pop("_model_name_or_path", None)
    return cfg
