"""Capture: load and shard a checkpoint, discover its layers, hook them, and write a lossless store.

Calling the package runs a capture: ``spinal.capture(cfg)`` is ``spinal.capture.capture(cfg)``."""

from __future__ import annotations

import sys
import types

__all__ = ["capture", "CaptureResult"]


def capture(cfg, progress=None, loaded=None):
    """Capture ``cfg.model`` × ``cfg.prompts`` into the store ``cfg.out`` in this process; see
    :func:`spinal.capture.runner.capture`."""
    from spinal.capture.runner import capture as run

    return run(cfg, progress, loaded)


def __getattr__(name: str):
    if name == "CaptureResult":
        from spinal.capture.runner import CaptureResult

        return CaptureResult
    raise AttributeError(f"module 'spinal.capture' has no attribute {name!r}")


class _Stage(types.ModuleType):
    """The package, callable as its stage (the one name serves as package and as verb)."""

    def __call__(self, cfg, progress=None, loaded=None):
        return capture(cfg, progress, loaded)


sys.modules[__name__].__class__ = _Stage
