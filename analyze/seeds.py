"""Every seeded random stream of the analysis, one purpose each: one seed reproduces a trace and a comparison."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    """The second word of each stream's seed ``[seed, purpose]``; values are recorded history: never renumber."""

    BOOTSTRAP = 1  # block draws of the a bootstrap: the same for every layer and checkpoint, so replicates pair
    NULL_SPLITS = 2  # split-halves of the sequence blocks: the null spread of Δa
    LENS_TOKENS = 3  # the token subsample of the transport pass (and of the cross-readout lens)
    COMPANION_TOKENS = 4  # the companions' subset of the lens tokens (JS, KL to final, entropy)
    LENS_EXTENSION = 9  # the order in which the lens subsample grows beyond its pilot (the tokens not in it)
    COMPARE = 7  # the ΔL sequence bootstrap and its split-halves
    POSITIONS = 8  # the sequence bootstrap of the per-position profile (analyze/compare/positions.py)
    CALIBRATION = 10  # the simulated layers that calibrate a's bootstrap SE where N ≤ 8·d, one stream per layer
    # (keyed by the layer: its c is pooled over the trace's layers, analyze/contraction/calibration.py)
    CKA_TOKENS = 11  # the token subsample of linear CKA (analyze/compare/cka.py): the same for every layer and pair


def rng(seed: int, purpose: Purpose, *keys: int) -> np.random.Generator:
    """The generator of one purpose: independent of the others, identical across checkpoints, and across layers
    unless ``keys`` (a layer) make it one stream per layer (the calibration's, whose layers are pooled)."""
    return np.random.default_rng([seed, int(purpose), *map(int, keys)])
