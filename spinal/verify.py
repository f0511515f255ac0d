"""Read every chunk of a store, check checksums and finiteness, and name the layer and token range of any damage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from spinal.store import Store, decode


@dataclass(frozen=True)
class Damage:
    where: str  # "hidden", "tokens/ids", "lens/unembed", …
    layer: int | None
    token_start: int | None
    token_stop: int | None
    error: str

    def __str__(self) -> str:
        if self.layer is None:
            return f"{self.where}: {self.error}"
        return f"{self.where}: layer {self.layer}, tokens {self.token_start}–{self.token_stop}: {self.error}"


@dataclass(frozen=True)
class VerifyReport:
    chunks_read: int
    damage: tuple[Damage, ...] = field(default_factory=tuple)
    units_not_done: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage


def verify(store: Store, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Read every chunk of ``hidden`` (done units only) and every small array."""
    damage: list[Damage] = []
    read = hidden_read = 0
    for path in _small_arrays(store):
        try:
            np.asarray(store.group[path][...])
            read += 1
        except Exception as e:
            damage.append(Damage(path, None, None, None, _msg(e)))
    done = store.done()
    t_chunk = int(store.meta["t_chunk"])
    ranges = [
        (a, min(a + t_chunk, u.token_stop))
        for u in store.units if done[u.index]
        for a in range(u.token_start, u.token_stop, t_chunk)
    ]
    total = len(ranges) * len(store.layers)
    for li, layer in enumerate(store.layers):
        for a, b in ranges:
            try:
                x = decode(np.asarray(store.hidden[li, a:b, :]), store.dtype)  # (token, dim)
                if not np.isfinite(x).all():
                    damage.append(Damage("hidden", layer, a, b, "non-finite values"))
            except Exception as e:
                damage.append(Damage("hidden", layer, a, b, _msg(e)))
            read += 1
            hidden_read += 1
            if progress:
                progress(hidden_read, total)
    return VerifyReport(read, tuple(damage), int((~done).sum()))


def _small_arrays(store: Store) -> list[str]:
    out = []
    for grp in ("tokens", "sequences", "units", "lens"):
        out += [f"{grp}/{name}" for name, _ in store.group[grp].arrays()]
    return sorted(out)


def _msg(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".strip()
