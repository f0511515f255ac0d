"""The option strings that select what to store and fit: layer lists, token-position rules and spectral fit windows,
each parsed and checked against its one grammar."""

from __future__ import annotations

import re

from spinal.errors import InputError
from spinal.text import ranges

POSITION_RULES = ("auto", "text", "user", "reply", "all-but-first", "all", "last:K", "response")


def parse_positions(rule: str) -> tuple[str, int]:
    """'auto' | 'text' | 'user' | 'reply' | 'all-but-first' | 'all' | 'response' | 'last:K' -> (kind, K)."""
    if rule in ("auto", "text", "user", "reply", "all-but-first", "all", "response"):
        return rule, 0
    m = re.fullmatch(r"last:(\d+)", rule)
    if m and int(m.group(1)) >= 1:
        return "last", int(m.group(1))
    raise InputError(f"positions={rule!r}; choose one of {', '.join(POSITION_RULES)} (K ≥ 1)")


def parse_layers(spec: str, n_layers: int | None) -> list[int] | None:
    """'all' or '0,4,8-12' -> sorted layer indices (checked against n_layers = blocks + 1 when known)."""
    if spec.strip() == "all":
        return list(range(n_layers)) if n_layers is not None else None
    out: set[int] = set()
    twice: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"layers={spec!r}: cannot read {part!r}; use 'all' or e.g. '0,4,8-12'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"layers={spec!r}: range {part!r} runs backwards")
        twice.update(out.intersection(range(lo, hi + 1)))
        out.update(range(lo, hi + 1))
    if twice:
        raise InputError(f"layers={spec!r} names layer(s) {ranges(sorted(twice))} more than once; give each layer once")
    if n_layers is not None:
        bad = sorted(i for i in out if i >= n_layers)
        if bad:
            raise InputError(
                f"layers {bad} do not exist: this model has layers 0–{n_layers - 1} "
                f"(0 = embedding output, {n_layers - 1} = last block)"
            )
    return sorted(out)


def parse_window(spec: str) -> tuple[int, int] | None:
    """'auto' -> None (the docs/method.md §2 rule) or 'K_LO:K_HI' -> (K_LO, K_HI), 1-based ranks."""
    if spec == "auto":
        return None
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    if not m or not 1 <= int(m.group(1)) < int(m.group(2)):
        raise InputError(f"window={spec!r}; use 'auto' or 'K_LO:K_HI' with 1 ≤ K_LO < K_HI")
    return int(m.group(1)), int(m.group(2))
