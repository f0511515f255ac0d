#!/usr/bin/env bash
# Set up SPINAL in ./.venv: the CPU build of PyTorch where no GPU is present, then the package.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q torch 2>&1 | grep -v "^WARNING: Location" || true
  else
    # No GPU: take the CPU build first, so no dependency pulls a multi-GB CUDA build.
    .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  fi
fi
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import spinal, torch; print(f'spinal {spinal.__version__} ready (torch {torch.__version__})')"
# --real-model: also fetch SmolLM2-135M-Instruct (a real SFT+DPO model, 93 MB GGUF) into models/ for the tests
# and audits that use it (reference/real_model.py); nothing else downloads model weights.
if [ "${1:-}" = "--real-model" ]; then
  .venv/bin/python -m reference.real_model
fi
