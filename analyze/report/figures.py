"""What every report figure shares: one colour per checkpoint, the quantities' names, literal label text, where
a step is drawn, the fitted power law, and the PNG writer (standalone matplotlib Figures, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 100  # ~1000 px wide figures: readable in the report and in a PR thumbnail
A_NAME = "rank-decay exponent a (σ_k ∝ k^-a)"
TERMINAL_COLOR = "#f4a340"
BAD_COLOR = "#c0392b"


def colors(n: int) -> list:
    """One colour per checkpoint (tab10 order, cycled), shared by every figure and the report."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def text(s) -> str:
    """User text (labels) drawn literally: an even number of '$' would otherwise switch matplotlib to mathtext."""
    return str(s).replace("$", r"\$")


def step_x(layers: np.ndarray) -> np.ndarray:
    """x position of the step ℓ→next layer: midway between the two layers (NaN for the last layer)."""
    layers = np.asarray(layers, dtype=float)
    return np.append((layers[:-1] + layers[1:]) / 2, np.nan)


def fit_line(sv: np.ndarray, a: float, k_lo: int, k_hi: int, spikes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power law over the window: σ̂_k = C·(k − spikes)^-a, C the weighted (1/k) LS intercept.

    Matches slopes.fit_wls, which regresses log σ_k on log(k − spikes) with weights 1/(k − spikes).
    """
    k = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    bulk = k - spikes  # (k,) bulk ranks, 1-based
    y = np.log(np.asarray(sv, dtype=np.float64)[k_lo - 1 : k_hi])
    w = 1.0 / bulk
    log_c = float(np.sum(w * (y + a * np.log(bulk))) / np.sum(w))
    return k, np.exp(log_c - a * np.log(bulk))


def fit_ok(table: pd.DataFrame) -> np.ndarray:
    """True where the fit status is 'ok' (a missing status counts as not ok)."""
    return (table["status"].astype(object) == "ok").to_numpy()


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder made if need be); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path

