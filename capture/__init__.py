"""Capture: load and shard a checkpoint, discover its layers, hook them, and write a lossless store."""

from spinal.capture.runner import CaptureResult, capture

__all__ = ["capture", "CaptureResult"]
