"""The Zarr contract between capture and analysis: an opened store's lossless arrays, its manifest and its reads.

A store is one Zarr v3 group per checkpoint × prompt set (docs/store-format.md):

    hidden            (layer, token, dim)  raw model dtype; bfloat16 as its 16 raw bits (uint16)
    tokens/ids        (token,) int32       token id at each stored position
    tokens/sequence   (token,) int32       sequence index, −1 marks padding
    tokens/position   (token,) int32       position inside the sequence
    sequences/*       (sequence,)          prompt_id, text_hash, offset, length, input_length,
                                           truncated, unit
    units/*           (unit,)              token_start, token_stop, seq_start, seq_stop; done
    lens/*                                 final norm + unembedding arrays, spec in attributes

Every shard of ``hidden`` belongs to exactly one work unit (and one layer), so no shard ever
has two writers; ``units/done`` (one chunk per unit) is written only after all of a unit's
shards are. Readers see done units and valid tokens only. The token layout is planned in
``spinal.store.layout``, a store is created by ``spinal.store.create`` and its location is read by
``spinal.store.location``.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from functools import cached_property
from typing import Iterator

import numpy as np
import zarr

from spinal.dtypes import CAPTURED, TABLE
from spinal.errors import IntegrityError, StoreError, first_line
from spinal.store import remote
from spinal.store.layout import Unit
from spinal.lens import Lens, LensSpec
from spinal.store.location import ATTR_KEY, location_state, root_meta
from spinal.store.shards import ShardWriter
from spinal.text import ranges

FORMAT_VERSION = 1


def storage_dtype(real_dtype: str) -> str:
    """The numpy dtype a captured dtype's bits are stored in (bfloat16: uint16; spinal/dtypes.py)."""
    if real_dtype not in CAPTURED:
        raise StoreError(f"dtype {real_dtype!r} cannot be stored; supported: {sorted(CAPTURED)}")
    return TABLE[real_dtype].storage


def encode(x, real_dtype: str) -> np.ndarray:
    """A torch tensor or numpy array in ``real_dtype`` -> the numpy array stored (bit for bit)."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if real_dtype == "bfloat16":
            return x.contiguous().view(torch.int16).numpy().view(np.uint16)
        return x.numpy()
    return np.asarray(x, dtype=storage_dtype(real_dtype))


def decode(raw: np.ndarray, real_dtype: str) -> np.ndarray:
    """Stored array -> float32 (exact for bfloat16 and float16; float32 unchanged)."""
    if real_dtype == "bfloat16":
        # bf16 is the top half of a float32: shift the 16 bits up (exact).
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def open_group(path: str, mode: str) -> zarr.Group:
    """A Zarr group at a local path or an fsspec URL (file://, s3://, gs://, http:// read-only, … with their
    packages installed: spinal.store.remote)."""
    if "://" in path:
        # fsspec's local filesystem does not create parent folders unless asked to
        opts = {"auto_mkdir": True} if path.startswith("file://") else remote.options(path)
        return zarr.open_group(path, mode=mode, storage_options=opts)
    return zarr.open_group(path, mode=mode)


TABLES = {
    "tokens": ("ids", "sequence", "position"),
    "sequences": ("prompt_id", "text_hash", "offset", "length", "input_length", "truncated", "unit"),
    "units": ("seq_start", "seq_stop", "token_start", "token_stop"),
}


class Store:
    """An opened store: metadata, the manifest, unit writes and validated reads."""

    def __init__(self, group: zarr.Group, path: str):
        self.group = group
        self.path = path
        attrs = dict(group.attrs)
        if ATTR_KEY not in attrs:
            raise StoreError(f"{path} is a Zarr group but not a SPINAL store (no '{ATTR_KEY}' attributes)")
        self.meta: dict = attrs[ATTR_KEY]
        if self.meta.get("state") == "creating":
            raise StoreError(f"{path}: the store's creation never finished (the capture was stopped while "
                             "creating it); rerun the capture, with or without --resume, to start it again")
        version = self.meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format version {version}; this SPINAL reads ≤ {FORMAT_VERSION}: upgrade spinal"
            )
        try:
            self.hidden = group["hidden"]
            self.dtype: str = self.hidden.attrs["spinal_dtype"]
        except Exception as e:
            raise IntegrityError(f"{path}: the 'hidden' array's metadata cannot be read ({first_line(e, typed=True)}); "
                                 f"run `spinal verify {path}`") from None
        self.layers: list[int] = list(self.meta["layers"])

    @classmethod
    def open(cls, path: str, mode: str = "r") -> "Store":
        try:
            state = location_state(path)
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
        if state == "absent":
            raise StoreError(f"no SPINAL store at {path}: nothing is there")
        if state == "file":
            raise StoreError(f"no SPINAL store at {path}: it is a file, not a store folder")
        if state == "empty":
            raise StoreError(f"no SPINAL store at {path}: the folder is empty")
        if state == "damaged":
            what, _ = root_meta(path)
            raise IntegrityError(f"{path}: the store's root zarr.json is {what}; the arrays are there but "
                                 "the store's metadata is lost: recapture with --overwrite")
        if state == "foreign":
            raise StoreError(f"{path} is not a SPINAL store (no SPINAL attributes in its zarr.json)")
        try:
            g = open_group(path, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
            raise StoreError(f"no SPINAL store at {path} ({first_line(e, typed=True)})") from None
        return cls(g, path)

    # -- units and manifest ----------------------------------------------------------------

    def read(self, name: str) -> np.ndarray:
        """A whole small array (tables, tokens), or one clear IntegrityError naming it."""
        try:
            return np.asarray(self.group[name][...])
        except Exception as e:
            raise IntegrityError(f"{self.path}: array '{name}' is damaged ({first_line(e, typed=True)}); "
                                 f"run `spinal verify {self.path}`") from None

    def check_tables(self) -> None:
        """Read every small array (tokens, sequences, units, lens) once: the first damaged one is a clear
        IntegrityError naming it. Readers call this before they start work."""
        for grp, names in TABLES.items():
            for name in names:
                self.read(f"{grp}/{name}")
        self.done(strict=True)
        self.lens()

    @cached_property
    def units(self) -> tuple[Unit, ...]:
        """The unit table, read once per Store (four small arrays; it never changes after creation)."""
        cols = [self.read(f"units/{c}") for c in TABLES["units"]]
        return tuple(Unit(i, *(int(c[i]) for c in cols)) for i in range(len(cols[0])))

    def done(self, strict: bool = False) -> np.ndarray:
        """(unit,) bool. An unreadable done marker counts as not done (its unit is redone on resume),
        or, with ``strict`` (readers), raises an IntegrityError naming the units."""
        try:
            arr = self.group["units/done"]
            return np.asarray(arr[:]).astype(bool)
        except Exception:  # a torn or damaged chunk: one read per unit
            pass
        try:
            arr = self.group["units/done"]
        except Exception as e:
            raise IntegrityError(f"{self.path}: the manifest 'units/done' cannot be read ({first_line(e, typed=True)})") from None
        out = np.zeros(arr.shape[0], dtype=bool)
        bad = []
        for i in range(arr.shape[0]):
            try:
                out[i] = bool(arr[i])
            except Exception:
                bad.append(i)
        if bad and strict:
            raise IntegrityError(
                f"{self.path}: the done markers (units/done) of unit(s) {ranges(bad)} are damaged; "
                "`spinal capture … --resume` rewrites those units"
            )
        return out

    @cached_property
    def shard_writer(self) -> ShardWriter | None:
        """SPINAL's own writer of ``hidden``'s shards (spinal/store/shards.py), or None where zarr writes them."""
        return ShardWriter.for_array(self.hidden)

    def write_unit(self, unit: Unit, block: np.ndarray, pool: Executor | None = None, direct: bool = True) -> None:
        """Write a unit's whole shards (block: (layer, unit tokens, dim), storage dtype), then mark it done.

        ``pool``: threads that encode and write the shards in parallel (None: this thread writes them one by one).
        ``direct``: local shard files with ``O_DIRECT``, past the page cache, where the file system takes it
        (spinal/store/shards.py); the bytes are the same either way.
        """
        expected = (len(self.layers), unit.token_stop - unit.token_start, self.hidden.shape[2])
        if block.shape != expected:
            raise StoreError(f"unit {unit.index}: block shape {block.shape}, expected {expected}")
        if block.dtype != self.hidden.dtype:
            raise StoreError(f"unit {unit.index}: block dtype {block.dtype}, the store holds {self.hidden.dtype}")
        if self.shard_writer is not None:
            self.shard_writer.write_block(unit.token_start, block, pool, direct)
        else:
            # every chunk is written, none first compared with the fill value: a unit owns whole shards
            self.hidden.with_config({"write_empty_chunks": True})[:, unit.token_start : unit.token_stop, :] = block
        self.group["units/done"][unit.index] = 1

    def mark_complete(self) -> None:
        self.group = open_group(self.path, mode="r+")  # zarr caches attributes: reread what others wrote
        if not self.done().all():
            raise StoreError(f"{self.path}: cannot mark complete, units not done: {np.flatnonzero(~self.done())[:10]}")
        meta = dict(self.meta)
        meta["complete"] = True
        self.group.attrs[ATTR_KEY] = meta
        self.meta = meta

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    # -- reads -----------------------------------------------------------------------------

    def tokens(self) -> dict[str, np.ndarray]:
        return {k: self.read(f"tokens/{k}") for k in ("ids", "sequence", "position")}

    def sequences(self) -> dict[str, np.ndarray]:
        names = ("prompt_id", "text_hash", "offset", "length", "input_length", "truncated", "unit")
        return {k: self.read(f"sequences/{k}") for k in names if k in self._sequence_names()}

    def _sequence_names(self) -> set[str]:
        try:
            return {k for k, _ in self.group["sequences"].arrays()}
        except Exception as e:
            raise IntegrityError(f"{self.path}: the 'sequences' table cannot be listed ({first_line(e, typed=True)})") from None

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise StoreError(f"layer {layer} is not in {self.path}; stored layers: {ranges(self.layers)}")
        return self.layers.index(layer)

    def iter_layer(self, layer: int, *, require_complete: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (hidden float32 (token, dim), sequence (token,)) per done unit, valid tokens only."""
        done = self.done(strict=require_complete)
        if require_complete and not done.all():
            raise StoreError(
                f"{self.path} is incomplete: {int((~done).sum())} of {done.size} units not captured; "
                "finish it with `spinal capture … --resume`"
            )
        li = self.layer_index(layer)
        seq = self.read("tokens/sequence")
        for u in self.units:
            if not done[u.index]:
                continue
            sl = slice(u.token_start, u.token_stop)
            valid = seq[sl] >= 0
            try:
                raw = self.hidden[li, sl, :]  # (token, dim)
            except Exception as e:
                raise IntegrityError(
                    f"{self.path}: layer {layer}, tokens {u.token_start}–{u.token_stop} (unit {u.index}) "
                    f"failed to read: {e}; run `spinal verify {self.path}`"
                ) from None
            yield decode(raw[valid], self.dtype), seq[sl][valid]

    def lens(self) -> Lens:
        try:
            g = self.group["lens"]
            spec = LensSpec.from_dict(dict(g.attrs["spec"]))
            arrays = {name: decode(np.asarray(a[...]), a.attrs["spinal_dtype"]) for name, a in g.arrays()}
        except Exception as e:
            raise IntegrityError(f"{self.path}: the stored lens is damaged ({first_line(e, typed=True)}); "
                                 f"run `spinal verify {self.path}`") from None
        return Lens.from_arrays(spec, arrays)
