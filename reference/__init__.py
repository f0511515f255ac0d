"""SPINAL's reference model family: offline data, training and evaluation scripts (not part of the spinal package)."""
