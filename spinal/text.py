"""How integer ranges are written into one-line messages: ``0–2, 5, 7–8``."""

from __future__ import annotations

from typing import Sequence


def ranges(xs: Sequence[int]) -> str:
    """Sorted integers as compact runs: ``[0, 1, 2, 5, 7, 8]`` -> ``"0–2, 5, 7–8"`` (``"none"`` when empty)."""
    xs = sorted(xs)
    if not xs:
        return "none"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)
