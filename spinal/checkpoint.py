"""A checkpoint's identity without loading it: a cheap sampled hash of its weight files (a folder's or one GGUF)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprint(folder: Path | None) -> str | None:
    """A cheap content hash of the weights: each safetensors (or the GGUF file's) header, size and three 1 MiB
    samples."""
    if folder is None:
        return None
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            for off in (0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))):
                fh.seek(off)
                h.update(fh.read(1 << 20))
    return "sha256-sampled:" + h.hexdigest()
