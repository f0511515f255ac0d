"""The Zarr contract between capture and analysis: layout, lossless dtypes, work units and the manifest.

A store is one Zarr v3 group per checkpoint × prompt set (DESIGN.md "The store"):

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
shards are. Readers see done units and valid tokens only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from spinal.errors import IntegrityError, StoreError
from spinal.lens import Lens, LensSpec
from spinal.lockfile import LOCK_NAME

FORMAT_VERSION = 1
ATTR_KEY = "spinal"

# Storage dtypes. zarr-python 3.1 has no bfloat16: its 16 raw bits go in uint16 and the real
# dtype is named in the array's attributes (DESIGN.md "Lossless").
_STORAGE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}


def storage_dtype(real_dtype: str) -> str:
    if real_dtype not in _STORAGE:
        raise StoreError(f"dtype {real_dtype!r} cannot be stored; supported: {sorted(_STORAGE)}")
    return _STORAGE[real_dtype]


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


@dataclass(frozen=True)
class Unit:
    """A work unit: whole sequences [seq_start, seq_stop) owning tokens [token_start, token_stop)."""

    index: int
    seq_start: int
    seq_stop: int
    token_start: int
    token_stop: int


@dataclass(frozen=True)
class TokenLayout:
    """The flat token axis computed up front from the tokenized prompts."""

    t_chunk: int
    t_shard: int
    units: tuple[Unit, ...]
    ids: np.ndarray  # (token,) int32
    sequence: np.ndarray  # (token,) int32, −1 = padding
    position: np.ndarray  # (token,) int32
    offsets: np.ndarray  # (sequence,) int64, first stored token of each sequence
    lengths: np.ndarray  # (sequence,) int32, stored tokens per sequence
    seq_unit: np.ndarray  # (sequence,) int32

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


def chunk_sizes(dim: int, itemsize: int, unit_tokens: int) -> tuple[int, int]:
    """(t_chunk, t_shard): ~1 MiB chunks (a good zstd/read unit), up to 8 chunks per shard.

    A shard never exceeds a work unit (rounded down to a power of two), so small units do not
    pad to huge shards.
    """
    target = 1 << 20
    t_chunk = 2 ** int(round(math.log2(max(1, target // (dim * itemsize)))))
    t_chunk = int(min(4096, max(16, t_chunk)))
    unit_pow2 = 2 ** int(math.floor(math.log2(max(1, unit_tokens))))
    t_shard = min(8 * t_chunk, max(unit_pow2, 1))
    return min(t_chunk, t_shard), t_shard


def plan_layout(
    token_ids: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    *,
    t_chunk: int,
    t_shard: int,
    unit_tokens: int,
) -> TokenLayout:
    """Pack whole sequences into units of about ``unit_tokens`` stored tokens, padded to whole shards.

    ``token_ids[s]`` are the ids at the stored ``positions[s]`` of sequence s.
    """
    if t_shard % t_chunk:
        raise ValueError(f"t_shard={t_shard} must be a multiple of t_chunk={t_chunk}")
    n_seq = len(token_ids)
    lengths = np.array([len(p) for p in positions], dtype=np.int32)
    units: list[Unit] = []
    seq_unit = np.zeros(n_seq, dtype=np.int32)
    offsets = np.zeros(n_seq, dtype=np.int64)
    s, tok = 0, 0
    while s < n_seq:
        start_s, start_t, used = s, tok, 0
        while s < n_seq and (used == 0 or used + lengths[s] <= max(unit_tokens, t_shard)):
            offsets[s] = tok + used
            seq_unit[s] = len(units)
            used += int(lengths[s])
            s += 1
        stop_t = start_t + max(t_shard, -(-used // t_shard) * t_shard)  # pad to whole shards
        units.append(Unit(len(units), start_s, s, start_t, stop_t))
        tok = stop_t
    ids = np.zeros(tok, dtype=np.int32)
    seq = np.full(tok, -1, dtype=np.int32)
    pos = np.full(tok, -1, dtype=np.int32)
    for i in range(n_seq):
        o, n = int(offsets[i]), int(lengths[i])
        ids[o : o + n] = np.asarray(token_ids[i], dtype=np.int32)
        seq[o : o + n] = i
        pos[o : o + n] = np.asarray(positions[i], dtype=np.int32)
    return TokenLayout(t_chunk, t_shard, tuple(units), ids, seq, pos, offsets, lengths, seq_unit)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def open_group(path: str, mode: str) -> zarr.Group:
    """A Zarr group at a local path or an fsspec URL (file://, s3://, gs://, … with their packages installed)."""
    if "://" in path:
        # fsspec's local filesystem does not create parent folders unless asked to
        opts = {"auto_mkdir": True} if path.startswith("file://") else {}
        return zarr.open_group(path, mode=mode, storage_options=opts)
    return zarr.open_group(path, mode=mode)


# -- the location of a store: what is there before a writer touches it -----------------------

# Everything SPINAL writes at a store's top level; --overwrite removes these names and nothing else.
STORE_ENTRIES = ("zarr.json", "hidden", "tokens", "sequences", "units", "lens", LOCK_NAME)


def _fs(path: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/")


def _root_meta(path: str) -> tuple[str, dict | None]:
    """('missing' | 'unreadable' | 'ok', root zarr.json as a dict)."""
    fs, root = _fs(path)
    try:
        raw = fs.cat_file(f"{root}/zarr.json")
    except FileNotFoundError:
        return "missing", None
    except (IsADirectoryError, PermissionError, OSError):
        return "unreadable", None
    try:
        doc = json.loads(raw)
        return ("ok", doc) if isinstance(doc, dict) else ("unreadable", None)
    except ValueError:
        return "unreadable", None


def location_state(path: str) -> str:
    """What is at a store path, for writers deciding what they may do:

    absent    nothing there                 empty     a folder with nothing of anyone's in it
    file      a plain file                  foreign   something that is not a SPINAL store
    creating  a SPINAL store whose creation never finished (safe to start again)
    ready     a SPINAL store (complete or resumable)
    damaged   SPINAL's folders whose root ``zarr.json`` is missing or unreadable
    """
    fs, root = _fs(path)
    if not fs.exists(root):
        return "absent"
    if fs.isfile(root):
        return "file"
    names = {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)}
    names = {n for n in names if not _stray(n) and n != LOCK_NAME}
    if not names:
        return "empty"
    state, doc = _root_meta(path)
    if state == "ok":
        meta = (doc.get("attributes") or {}).get(ATTR_KEY)
        if doc.get("node_type") != "group" or not isinstance(meta, dict):
            return "foreign"
        return "creating" if meta.get("state") == "creating" else "ready"
    # No readable root: ours only if every entry is a SPINAL name and `hidden` says it is SPINAL's.
    if not names <= set(STORE_ENTRIES):
        return "foreign"
    try:
        hidden = json.loads(fs.cat_file(f"{root}/hidden/zarr.json"))
        return "damaged" if "spinal_dtype" in (hidden.get("attributes") or {}) else "foreign"
    except Exception:
        return "damaged" if names <= {"zarr.json", LOCK_NAME} else "foreign"


def _stray(name: str) -> bool:
    """Temporary files of a killed writer: zarr's ``*.partial`` and the lock's ``*.tmp``."""
    return name.endswith(".partial") or name.endswith(".tmp")


def store_exists(path: str) -> bool:
    """A SPINAL store whose creation finished is at ``path``."""
    try:
        return location_state(path) == "ready"
    except (OSError, ValueError):
        return False


def remove_stray(path: str) -> tuple[int, int]:
    """Delete temporary files left by killed writers (call with the writer lock held): (files, bytes)."""
    fs, root = _fs(path)
    n = size = 0
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return 0, 0
    for name, info in found.items():
        if _stray(name.rsplit("/", 1)[-1]):
            try:
                fs.rm_file(name)
                n += 1
                size += int(info.get("size") or 0)
            except FileNotFoundError:
                pass
    return n, size


def _write_root(path: str, meta: dict) -> None:
    """Write the root group's zarr.json atomically (temporary file, then rename)."""
    fs, root = _fs(path)
    fs.makedirs(root, exist_ok=True)
    doc = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {ATTR_KEY: meta}}, indent=2).encode()
    if "://" in path and not path.startswith("file://"):
        fs.pipe_file(f"{root}/zarr.json", doc)  # object stores replace an object whole
        return
    tmp = f"{root}/zarr.json.{os.getpid()}.partial"
    with open(tmp, "wb") as f:
        f.write(doc)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, f"{root}/zarr.json")


def clear_for_creation(path: str) -> None:
    """Mark the location 'creating' first, then remove SPINAL's entries (and only those).

    A kill at any point leaves a location that reads as 'creating': the next writer starts
    again; a user's own files beside SPINAL's are never touched.
    """
    _write_root(path, {"format_version": FORMAT_VERSION, "state": "creating"})
    fs, root = _fs(path)
    for name in STORE_ENTRIES:
        if name in ("zarr.json", LOCK_NAME):
            continue
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)
    remove_stray(path)


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
            raise IntegrityError(f"{path}: the 'hidden' array's metadata cannot be read ({_first_line(e)}); "
                                 f"run `spinal verify {path}`") from None
        self.layers: list[int] = list(self.meta["layers"])
        self._units: list[Unit] | None = None

    # -- creation --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str,
        *,
        layout: TokenLayout,
        layers: Sequence[int],
        dim: int,
        dtype: str,
        sequences: dict[str, np.ndarray],
        lens_arrays: dict[str, tuple[np.ndarray, str]],
        lens_spec: LensSpec,
        meta: dict,
    ) -> "Store":
        """Write the layout, tables, lens and attributes; ``hidden`` starts empty, no unit is done.

        The caller holds the writer lock. The root is marked 'creating' before anything else is
        written and gets its full attributes last, so a creation cut short at any point reads as
        'creating' (started again by the next capture), never as a store.
        """
        clear_for_creation(path)
        g = open_group(path, mode="r+")
        n_layers, n_tok = len(layers), layout.n_tokens
        hidden = g.create_array(
            "hidden",
            shape=(n_layers, n_tok, dim),  # (layer, token, dim)
            chunks=(1, layout.t_chunk, dim),
            shards=(1, layout.t_shard, dim),
            dtype=storage_dtype(dtype),
            fill_value=0,
            # zstd level 1: fast enough to keep up with the forward pass; crc32c so a damaged
            # chunk raises instead of decoding as numbers.
            compressors=[ZstdCodec(level=1), Crc32cCodec()],
            dimension_names=("layer", "token", "dim"),
            attributes={"spinal_dtype": dtype},
        )
        _small(g, "tokens/ids", layout.ids, ("token",))
        _small(g, "tokens/sequence", layout.sequence, ("token",))
        _small(g, "tokens/position", layout.position, ("token",))
        for name, values in sequences.items():
            _small(g, f"sequences/{name}", values, ("sequence",))
        _small(g, "sequences/offset", layout.offsets, ("sequence",))
        _small(g, "sequences/length", layout.lengths, ("sequence",))
        _small(g, "sequences/unit", layout.seq_unit, ("sequence",))
        for field_ in ("seq_start", "seq_stop", "token_start", "token_stop"):
            vals = np.array([getattr(u, field_) for u in layout.units], dtype=np.int64)
            _small(g, f"units/{field_}", vals, ("unit",))
        g.create_array(
            "units/done", shape=(len(layout.units),), chunks=(1,), dtype="uint8", fill_value=0,
            compressors=[Crc32cCodec()], dimension_names=("unit",),
        )  # one chunk per unit: marking a unit done never touches another unit's key; checksummed so a
        #    flipped bit reads as damage (verify names it; resume redoes the unit), not as "not done"
        lens_g = g.require_group("lens")
        lens_g.attrs["spec"] = lens_spec.to_dict()
        for name, (arr, real) in lens_arrays.items():
            a = lens_g.create_array(
                name, shape=arr.shape, chunks=arr.shape, dtype=arr.dtype, fill_value=0,
                compressors=[ZstdCodec(level=3), Crc32cCodec()], attributes={"spinal_dtype": real},
            )
            a[...] = arr
        g.attrs[ATTR_KEY] = {
            **meta,
            "format_version": FORMAT_VERSION,
            "layers": list(layers),
            "dim": dim,
            "dtype": dtype,
            "t_chunk": layout.t_chunk,
            "t_shard": layout.t_shard,
            "n_units": len(layout.units),
            "n_sequences": int(layout.offsets.shape[0]),
            "n_tokens_valid": int((layout.sequence >= 0).sum()),
            "complete": False,
        }
        del hidden
        return cls(g, path)

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
            what, _ = _root_meta(path)
            raise IntegrityError(f"{path}: the store's root zarr.json is {what}; the arrays are there but "
                                 "the store's metadata is lost: recapture with --overwrite")
        if state == "foreign":
            raise StoreError(f"{path} is not a SPINAL store (no SPINAL attributes in its zarr.json)")
        try:
            g = open_group(path, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
            raise StoreError(f"no SPINAL store at {path} ({_first_line(e)})") from None
        return cls(g, path)

    # -- units and manifest ----------------------------------------------------------------

    def read(self, name: str) -> np.ndarray:
        """A whole small array (tables, tokens), or one clear IntegrityError naming it."""
        try:
            return np.asarray(self.group[name][...])
        except Exception as e:
            raise IntegrityError(f"{self.path}: array '{name}' is damaged ({_first_line(e)}); "
                                 f"run `spinal verify {self.path}`") from None

    def check_tables(self) -> None:
        """Read every small array (tokens, sequences, units, lens) once: the first damaged one is a clear
        IntegrityError naming it. Readers call this before they start work."""
        for grp, names in TABLES.items():
            for name in names:
                self.read(f"{grp}/{name}")
        self.done(strict=True)
        self.lens()

    @property
    def units(self) -> list[Unit]:
        if self._units is None:
            cols = [self.read(f"units/{c}") for c in ("seq_start", "seq_stop", "token_start", "token_stop")]
            self._units = [Unit(i, *(int(c[i]) for c in cols)) for i in range(len(cols[0]))]
        return self._units

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
            raise IntegrityError(f"{self.path}: the manifest 'units/done' cannot be read ({_first_line(e)})") from None
        out = np.zeros(arr.shape[0], dtype=bool)
        bad = []
        for i in range(arr.shape[0]):
            try:
                out[i] = bool(arr[i])
            except Exception:
                bad.append(i)
        if bad and strict:
            raise IntegrityError(
                f"{self.path}: the done markers (units/done) of unit(s) {_ranges(bad)} are damaged; "
                "`spinal capture … --resume` rewrites those units"
            )
        return out

    def write_unit(self, unit: Unit, block: np.ndarray) -> None:
        """Write a unit's whole shards (block: (layer, unit tokens, dim), storage dtype), then mark it done."""
        expected = (len(self.layers), unit.token_stop - unit.token_start, self.hidden.shape[2])
        if block.shape != expected:
            raise StoreError(f"unit {unit.index}: block shape {block.shape}, expected {expected}")
        self.hidden[:, unit.token_start : unit.token_stop, :] = block  # (layer, token, dim)
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
            raise IntegrityError(f"{self.path}: the 'sequences' table cannot be listed ({_first_line(e)})") from None

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise StoreError(f"layer {layer} is not in {self.path}; stored layers: {_ranges(self.layers)}")
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
            raise IntegrityError(f"{self.path}: the stored lens is damaged ({_first_line(e)}); "
                                 f"run `spinal verify {self.path}`") from None
        return Lens.from_arrays(spec, arrays)


def _small(g: zarr.Group, name: str, values: np.ndarray, dims: tuple[str, ...]) -> None:
    values = np.asarray(values)
    dtype = str if values.dtype.kind in "UO" else values.dtype
    a = g.create_array(  # every array carries a checksum, strings too (after their vlen-utf8 encoding)
        name, shape=values.shape, chunks=values.shape if values.size else (1,), dtype=dtype,
        compressors=[ZstdCodec(level=3), Crc32cCodec()], dimension_names=dims,
    )
    if values.size:
        a[...] = values


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")


def _ranges(xs: Sequence[int]) -> str:
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


def dumps(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True, default=str)


def _writer(path: str) -> str | None:
    """Who holds the store's writer lock now (None: nobody)."""
    from spinal.lock import is_stale, read_holder

    h = read_holder(path)
    if h is None:
        return None
    return h.describe() + (" (gone: the next writer takes the lock over)" if is_stale(h) else "")


def summary(store: Store) -> dict:
    """What is inside a store, how complete, how large (for `spinal inspect`)."""
    done = store.done()
    nbytes = 0
    try:
        nbytes = int(store.hidden.nbytes_stored())
    except Exception:  # remote stores may not list sizes
        nbytes = -1
    src = store.meta.get("source", {})
    return {
        "path": store.path,
        "format_version": store.meta["format_version"],
        "model": src.get("model"),
        "architecture": src.get("architecture"),
        "weights_fingerprint": src.get("weights_fingerprint"),
        "dtype": store.dtype,
        "layers": _ranges(store.layers),
        "n_layers": len(store.layers),
        "dim": store.meta["dim"],
        "sequences": store.meta["n_sequences"],
        "tokens": store.meta["n_tokens_valid"],
        "positions": store.meta.get("positions"),
        "units_done": f"{int(done.sum())}/{done.size}",
        "complete": bool(store.complete and done.all()),
        "hidden_bytes_stored": nbytes,
        "hidden_bytes_raw": int(np.prod(store.hidden.shape[::2])) * int(store.meta["n_tokens_valid"])
        * (4 if store.dtype == "float32" else 2),
        "prompts_sha256": store.meta.get("prompts", {}).get("sha256"),
        "created": store.meta.get("created"),
        "writer": _writer(store.path),
        "software": store.meta.get("software"),
        "self_check": store.meta.get("self_check"),
    }
