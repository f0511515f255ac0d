"""Read every chunk of a store, check checksums and finiteness, and name the array and range of any damage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from spinal.errors import first_line
from spinal.store.contract import TABLES, Store, decode
from spinal.text import ranges


@dataclass(frozen=True)
class Damage:
    where: str  # "hidden", "tokens/ids", "units/done", "lens/unembed", …
    layer: int | None
    token_start: int | None
    token_stop: int | None
    error: str
    span: str | None = None  # e.g. "units 3–4" for the manifest

    def __str__(self) -> str:
        if self.layer is not None:
            return f"{self.where}: layer {self.layer}, tokens {self.token_start}–{self.token_stop}: {self.error}"
        if self.span:
            return f"{self.where}: {self.span}: {self.error}"
        return f"{self.where}: {self.error}"


@dataclass(frozen=True)
class VerifyReport:
    chunks_read: int
    damage: tuple[Damage, ...] = field(default_factory=tuple)
    units_not_done: int = 0
    unchecked: tuple[str, ...] = ()  # arrays without a checksum codec (stores made before SPINAL 0.2)
    hidden_chunks_read: int = 0  # of chunks_read: the activation chunks (what the progress bar counts)

    def counts(self) -> str:
        """'208 activation chunks and 20 tables and markers' (the bar shows the first number)."""
        small = self.chunks_read - self.hidden_chunks_read
        return (f"{self.hidden_chunks_read:,} activation chunk{'s' * (self.hidden_chunks_read != 1)} and {small:,} "
                f"table{'s' * (small != 1)} and marker{'s' * (small != 1)}")

    @property
    def ok(self) -> bool:
        return not self.damage


def verify(store: Store, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Read every small array, every done marker and every chunk of ``hidden`` (done units only); never raises
    on damage, names it."""
    damage: list[Damage] = []
    unchecked: list[str] = []
    read = 0
    for path in _small_arrays(store, damage):
        if path == "units/done":
            continue
        try:
            arr = store.group[path]
            if not _has_checksum(arr):
                unchecked.append(path)
            np.asarray(arr[...])
            read += 1
        except Exception as e:
            damage.append(Damage(path, None, None, None, first_line(e, typed=True)))
    done, bad_units, n_read = _done_markers(store, damage, unchecked)
    read += n_read
    t_chunk = int(store.meta["t_chunk"])
    try:
        units = [u for u in store.units if done[u.index]]
        ranges = [(a, min(a + t_chunk, u.token_stop)) for u in units for a in range(u.token_start, u.token_stop, t_chunk)]
    except Exception:  # the unit table is damaged (already named): read the whole token axis
        n = store.hidden.shape[1]
        ranges = [(a, min(a + t_chunk, n)) for a in range(0, n, t_chunk)]
    total = len(ranges) * len(store.layers)
    hidden_read = 0
    for li, layer in enumerate(store.layers):
        for a, b in ranges:
            try:
                x = decode(np.asarray(store.hidden[li, a:b, :]), store.dtype)  # (token, dim)
                if not np.isfinite(x).all():
                    damage.append(Damage("hidden", layer, a, b, "non-finite values"))
            except Exception as e:
                damage.append(Damage("hidden", layer, a, b, first_line(e, typed=True)))
            read += 1
            hidden_read += 1
            if progress:
                progress(hidden_read, total)
    not_done = int((~done).sum()) - len(bad_units)
    return VerifyReport(read, tuple(damage), not_done, tuple(unchecked), hidden_read)


def _done_markers(store: Store, damage: list[Damage], unchecked: list[str]) -> tuple[np.ndarray, list[int], int]:
    """Read the manifest one marker (chunk) at a time: (done, damaged unit indices, chunks read)."""
    try:
        arr = store.group["units/done"]
    except Exception as e:
        damage.append(Damage("units/done", None, None, None, first_line(e, typed=True)))
        n = int(store.meta.get("n_units", 0))
        return np.zeros(n, dtype=bool), list(range(n)), 0
    if not _has_checksum(arr):
        unchecked.append("units/done")
    done = np.zeros(arr.shape[0], dtype=bool)
    bad, errors = [], []
    for i in range(arr.shape[0]):
        try:
            done[i] = bool(arr[i])
        except Exception as e:
            bad.append(i)
            errors.append(first_line(e, typed=True))
    if bad:
        damage.append(Damage("units/done", None, None, None, errors[0] + "; `spinal capture … --resume` redoes them",
                             span=f"unit(s) {ranges(bad)}"))
    return done, bad, arr.shape[0]


def _has_checksum(arr) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs)


KNOWN = {**TABLES, "units": (*TABLES["units"], "done")}


def _small_arrays(store: Store, damage: list[Damage]) -> list[str]:
    """Every array a store must have (so one whose metadata is gone is named) plus any others listed."""
    out = {f"{g}/{n}" for g, names in KNOWN.items() for n in names}
    for grp in ("tokens", "sequences", "units", "lens"):
        try:
            out |= {f"{grp}/{name}" for name, _ in store.group[grp].arrays()}
        except Exception as e:
            if grp == "lens":
                damage.append(Damage(grp, None, None, None, first_line(e, typed=True)))
    return sorted(out)
