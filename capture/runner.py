"""Capture one checkpoint × one prompt set into a store: plan, self-check, then run work units with a background writer."""

from __future__ import annotations

import errno
import logging
import platform
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spinal.capture.discover import Anatomy, discover, dtype_name, lens_arrays
from spinal.capture.hooks import Recorder
from spinal.capture.load import Loaded, load
from spinal.capture.prompts import PromptSet, load_prompts
from spinal.capture.selfcheck import run_self_check
from spinal.capture.tokens import Tokenized, tokenize
from spinal.config import CaptureConfig, parse_layers
from spinal.errors import InputError, IntegrityError, StoreError
from spinal.lens import Lens
from spinal.lock import StoreLock, check_token, refuse_if_held
from spinal.outputs import check_writable_dir
from spinal.create import create_store
from spinal.layout import Unit, chunk_sizes, plan_layout
from spinal.location import location_state, remove_stray
from spinal.store import Store, decode, encode, sha256_text, storage_dtype

log = logging.getLogger(__name__)

# Options whose change makes a resumed store a different store.
IDENTITY_KEYS = ("weights_fingerprint", "model", "prompts_sha256", "layers", "positions", "max_length",
                 "chat_template", "dtype", "batch_size", "tokenizer_fingerprint", "unit_tokens")

Progress = Callable[[int, int], None]  # (stored tokens done, total)


@dataclass(frozen=True)
class CaptureResult:
    path: str
    units_written: int
    units_skipped: int
    tokens: int
    seconds: float
    self_check: dict | None


@dataclass
class Session:
    """A loaded model bound to an open store: everything needed to capture any of its units."""

    cfg: CaptureConfig
    loaded: Loaded
    anatomy: Anatomy
    prompts: PromptSet
    tokd: Tokenized
    store: Store
    check: dict | None
    lock: StoreLock | None = None  # held by this session (None: a Ray replica under its driver's lock)
    lock_token: str | None = None  # a replica's: the driver's lock, checked before each unit is written

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(p) for p in self.tokd.positions])

    def capture_unit(self, unit: Unit, rec: Recorder) -> np.ndarray:
        return _capture_unit(unit, self.loaded.model, self.loaded.tokenizer, rec, self.tokd, self.prompts,
                             self.store, _input_device(self.loaded.model), self.cfg.batch_size)

    def recorder(self) -> Recorder:
        return Recorder(self.anatomy.blocks, self.store.layers, self.store.hidden.shape[2], self.anatomy.arch)

    def run_unit(self, index: int) -> dict:
        """Capture and write one unit synchronously (cluster actors); returns small metadata only."""
        unit = self.store.units[index]
        t0 = time.perf_counter()
        with self.recorder() as rec:
            block = self.capture_unit(unit, rec)
        if self.lock_token is not None:
            check_token(self.store.path, self.lock_token)
        try:
            self.store.write_unit(unit, block)
        except OSError as e:
            raise _write_error(e, unit, self.store) from None
        return {"unit": index, "tokens": int(self.lengths[unit.seq_start : unit.seq_stop].sum()),
                "seconds": time.perf_counter() - t0}


def capture(cfg: CaptureConfig, progress: Progress | None = None, loaded: Loaded | None = None) -> CaptureResult:
    """Run a capture in this process. Every check that can refuse runs before an existing store is touched."""
    session = prepare(cfg, loaded)
    try:
        return _run_units(session, progress)
    finally:
        session.close()


def check_location(cfg: CaptureConfig) -> str:
    """What the capture will do at ``cfg.out`` ('create' or 'resume'), or one refusal; touches nothing.

    ``--resume`` means "finish or start": with no store, an empty folder or a creation that never
    finished, it starts one. A plain run starts one there too, and refuses a finished store.
    ``--overwrite`` replaces only a SPINAL store; anything else at the path is refused.
    """
    try:
        state = location_state(cfg.out)
    except OSError as e:
        raise StoreError(f"cannot read the output location {cfg.out}: {e.strerror or e}") from None
    if state == "file":
        raise StoreError(f"--out {cfg.out} is a file; give a folder path for the store")
    if state == "foreign":
        raise StoreError(f"--out {cfg.out} holds something that is not a SPINAL store; refusing to write there "
                         "(nothing was touched): choose another --out")
    if state == "damaged" and not cfg.overwrite:
        raise StoreError(f"{cfg.out} is a damaged SPINAL store (its root zarr.json is missing or unreadable); "
                         "replace it with --overwrite")
    if state == "ready":
        if cfg.overwrite:
            return "create"
        if not cfg.resume:
            raise StoreError(f"{cfg.out} already exists; pass --resume to finish it or --overwrite to replace it")
        return "resume"
    return "create"


def check_writable(path: str) -> None:
    """Refuse up front (one line) an output location this process cannot write."""
    if "://" in path and not path.startswith("file://"):
        return  # remote stores report their own errors on first write
    check_writable_dir(Path(path[len("file://"):] if path.startswith("file://") else path))


def prepare(cfg: CaptureConfig, loaded: Loaded | None = None, lock_token: str | None = None) -> Session:
    """Load, discover, tokenize, self-check, then create the store (or open it to resume).

    The writer lock is taken before the store is touched and kept by the session; a Ray
    replica passes its driver's ``lock_token`` instead and checks it is still the holder.
    """
    action = check_location(cfg)
    check_writable(cfg.out)
    if lock_token is None:
        refuse_if_held(cfg.out)
    prompts = load_prompts(cfg.prompts)
    loaded = loaded or load(
        cfg.model, dtype=cfg.dtype, device_map=cfg.device_map, max_memory=cfg.max_memory,
        trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle, allow_offload=cfg.allow_offload,
    )
    model, tok = loaded.model, loaded.tokenizer
    anatomy = discover(model)
    layers = parse_layers(cfg.layers, anatomy.n_layers)
    tokd = tokenize(prompts, tok, max_length=cfg.max_length, chat_template=cfg.chat_template, positions=cfg.positions)
    _check_context(model, tokd, prompts, cfg.max_length)
    real_dtype = dtype_name(next(model.parameters()).dtype)
    dim = int(anatomy.unembed.weight.shape[1])
    identity = _identity(cfg, loaded, prompts, layers, real_dtype)
    arrays = lens_arrays(anatomy)
    check = None
    if action == "resume":  # refuse changed inputs before taking the lock
        _check_same(Store.open(cfg.out), identity, cfg.out)
    elif cfg.self_check:  # a refused model never touches the output location
        lens = Lens.from_arrays(anatomy.spec, {k: decode(arr, real) for k, (arr, real) in arrays.items()})
        ids, mask, _ = _batch(tokd, list(range(min(2, len(tokd.input_ids)))), tok, _input_device(model))
        check = run_self_check(model, anatomy, lens, ids, mask, real_dtype).to_dict()
        log.info("self-check passed: %s", check)

    lock = None
    if lock_token is None:
        lock = StoreLock(cfg.out).acquire()
    else:
        check_token(cfg.out, lock_token)
    try:
        # Re-read the location under the lock: another writer may have made the store meanwhile.
        if location_state(cfg.out) == "ready" and not cfg.overwrite:
            if action == "create" and not cfg.resume and lock is not None:
                raise StoreError(f"{cfg.out} was created by another capture meanwhile; rerun with --resume")
            action = "resume"
        if action == "resume":
            store = Store.open(cfg.out, mode="r+")
            _check_same(store, identity, cfg.out)
            check = store.meta.get("self_check")
            if lock is not None:
                n, size = remove_stray(cfg.out)
                if n:
                    log.warning("removed %d temporary file(s) (%.1f MB) left by killed writers", n, size / 1e6)
        else:
            t_chunk, t_shard = chunk_sizes(dim, np.dtype(storage_dtype(real_dtype)).itemsize, cfg.unit_tokens)
            layout = plan_layout(tokd.stored_ids, tokd.positions, t_chunk=t_chunk, t_shard=t_shard,
                                 unit_tokens=cfg.unit_tokens)
            sequences = {
                "prompt_id": np.array([p.id for p in prompts.prompts], dtype=object),
                "text_hash": np.array([sha256_text(p.prompt + "\x00" + (p.response or "")) for p in prompts.prompts],
                                      dtype=object),
                "input_length": tokd.input_length,
                "truncated": tokd.truncated,
            }
            meta = _metadata(cfg, loaded, prompts, tokd, identity, check)
            if lock is not None:
                lock.check()
            try:
                store = create_store(cfg.out, layout=layout, layers=layers, dim=dim, dtype=real_dtype,
                                     sequences=sequences, lens_arrays=arrays, lens_spec=anatomy.spec, meta=meta)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise StoreError(f"disk full while creating {cfg.out}; nothing else was touched: free space "
                                     "and rerun (with --resume, or not)") from None
                raise StoreError(f"creating {cfg.out} failed: {e.strerror or e}") from None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if tokd.truncated.any():
        log.warning("%d of %d prompts were truncated to %d tokens", int(tokd.truncated.sum()),
                    len(tokd.truncated), cfg.max_length)
    return Session(cfg, loaded, anatomy, prompts, tokd, store, check, lock, lock_token)


def _check_context(model, tokd: Tokenized, prompts: PromptSet, max_length: int) -> None:
    """An input longer than the model's context gives activations the model was never trained on: refuse it."""
    cfg = model.config
    ctx = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                if isinstance(getattr(cfg, k, None), int)), None)
    if ctx is None:
        return
    lengths = [len(x) for x in tokd.input_ids]
    longest = int(np.argmax(lengths))
    if lengths[longest] > ctx:
        raise InputError(f"--max-length {max_length} lets prompt {prompts.prompts[longest].id!r} run to "
                         f"{lengths[longest]} tokens, beyond the model's context of {ctx} positions; "
                         f"use --max-length ≤ {ctx}")


def _run_units(session: Session, progress: Progress | None) -> CaptureResult:
    store = session.store
    units = store.units
    done = store.done()
    todo = [u for u in units if not done[u.index]]
    lengths = session.lengths
    total = int(lengths.sum())
    finished = int(sum(lengths[u.seq_start : u.seq_stop].sum() for u in units if done[u.index]))
    if progress:
        progress(finished, total)
    t0 = time.perf_counter()
    writer = _Writer(store)
    try:
        with session.recorder() as rec:
            for unit in todo:
                block = session.capture_unit(unit, rec)
                writer.submit(unit, block)
                finished += int(lengths[unit.seq_start : unit.seq_stop].sum())
                if progress:
                    progress(finished, total)
        writer.close()
    finally:
        writer.stop()
    store.mark_complete()
    return CaptureResult(store.path, len(todo), len(units) - len(todo), total, time.perf_counter() - t0,
                         session.check)


@torch.no_grad()
def _capture_unit(unit: Unit, model, tok, rec: Recorder, tokd: Tokenized, prompts: PromptSet, store: Store,
                  device, batch_size: int) -> np.ndarray:
    """Run a unit's sequences in batches; returns its (layer, unit tokens, dim) block in storage dtype."""
    n_tok = unit.token_stop - unit.token_start
    dim = store.hidden.shape[2]
    block = np.zeros((len(store.layers), n_tok, dim), dtype=storage_dtype(store.dtype))  # (layer, token, dim)
    offsets = np.asarray(store.group["sequences/offset"][unit.seq_start : unit.seq_stop]) - unit.token_start
    seqs = list(range(unit.seq_start, unit.seq_stop))
    for b in range(0, len(seqs), batch_size):
        batch = seqs[b : b + batch_size]
        ids, mask, flat = _batch(tokd, batch, tok, device, select=True)
        rec.gather(flat)
        # The base model only: hidden states need no logits, so the (vocab × dim) head is skipped.
        model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        if device.type == "cuda":
            torch.cuda.current_stream().synchronize()  # pinned host copies have landed
        dests = np.concatenate([np.arange(offsets[s - unit.seq_start], offsets[s - unit.seq_start]
                                          + len(tokd.positions[s])) for s in batch])
        for li, layer in enumerate(store.layers):
            h = rec.out[layer]  # (token, dim)
            if not torch.isfinite(h).all():
                bad = int(torch.nonzero(~torch.isfinite(h).all(-1))[0, 0])
                s, p = _token_owner(batch, tokd, bad)
                raise IntegrityError(
                    f"non-finite activation at layer {layer}, prompt {prompts.prompts[s].id!r} position {p} "
                    f"(unit {unit.index}); nothing was written for this unit. Try --dtype float32"
                )
            block[li, dests] = encode(h, store.dtype)
    return block


def _token_owner(batch, tokd: Tokenized, flat_row: int) -> tuple[int, int]:
    for s in batch:
        n = len(tokd.positions[s])
        if flat_row < n:
            return s, tokd.positions[s][flat_row]
        flat_row -= n
    return batch[-1], -1


def _batch(tokd: Tokenized, seqs: list[int], tok, device, select: bool = False):
    """Right-padded (batch, seq) ids and mask, and the flat indices of the stored positions."""
    width = max(len(tokd.input_ids[s]) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    flat = []
    for r, s in enumerate(seqs):
        x = tokd.input_ids[s]
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
        flat.extend(r * width + p for p in tokd.positions[s])
    return ids.to(device), mask.to(device), torch.tensor(flat, dtype=torch.long)


def _write_error(e: OSError, unit: Unit, store: Store) -> StoreError:
    if e.errno == errno.ENOSPC:
        return StoreError(
            f"disk full while writing unit {unit.index} (tokens {unit.token_start}–{unit.token_stop}) "
            f"of {store.path}; finished units are kept: free space and rerun with --resume"
        )
    return StoreError(f"writing unit {unit.index} of {store.path} failed: {e}")


class _Writer:
    """One background thread writing finished units (bounded queue: at most two units in memory)."""

    def __init__(self, store: Store):
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="spinal-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            unit, block = item
            try:
                self.store.write_unit(unit, block)
            except OSError as e:
                self.error = _write_error(e, unit, self.store)
            except BaseException as e:  # surfaced on the main thread
                self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, unit: Unit, block: np.ndarray) -> None:
        self._raise()
        self.q.put((unit, block))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        self._raise()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()


def _identity(cfg: CaptureConfig, loaded: Loaded, prompts: PromptSet, layers, real_dtype) -> dict:
    return {
        "weights_fingerprint": loaded.source["weights_fingerprint"],
        "model": loaded.source["model"] if loaded.source["weights_fingerprint"] is None else None,
        "prompts_sha256": prompts.sha256,
        "layers": list(layers),
        "positions": cfg.positions,
        "max_length": cfg.max_length,
        "chat_template": cfg.chat_template,
        "dtype": real_dtype,
        "batch_size": cfg.batch_size,
        "tokenizer_fingerprint": loaded.source["tokenizer"]["fingerprint"],
        "unit_tokens": cfg.unit_tokens,
    }


def _check_same(store: Store, identity: dict, path: str) -> None:
    stored = store.meta.get("identity", {})
    changed = [k for k in IDENTITY_KEYS if stored.get(k) != identity.get(k)]
    if changed:
        detail = "; ".join(f"{k}: store has {_short(stored.get(k))}, now {_short(identity.get(k))}" for k in changed)
        raise StoreError(f"--resume refused: {path} was made with different inputs ({detail})")


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _metadata(cfg, loaded: Loaded, prompts: PromptSet, tokd: Tokenized, identity: dict, check) -> dict:
    import transformers
    import zarr

    import spinal

    return {
        "identity": identity,
        "source": loaded.source,
        "capture": {k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite")},
        "prompts": {"path": prompts.path, "sha256": prompts.sha256, "count": len(prompts.prompts),
                    "truncated": int(tokd.truncated.sum())},
        "positions": cfg.positions,
        "self_check": check,
        "software": {"spinal": spinal.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "zarr": zarr.__version__,
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device
