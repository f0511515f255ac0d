"""A capture session: a loaded, checked model bound to its store under the writer lock, ready to capture and write
any of the store's units."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from spinal.capture.discover import Anatomy, discover, dtype_name, lens_arrays
from spinal.capture.hooks import Recorder
from spinal.capture.load import Loaded, load_for
from spinal.capture.inputs.prompts import PromptSet, load_prompts
from spinal.capture.provenance import check_same, check_same_layout, identity, metadata
from spinal.capture.selfcheck import run_self_check
from spinal.capture.tokens import Tokenized, tokenize
from spinal.capture.units import UnitCapture, batch_inputs, input_device
from spinal.config import CaptureConfig
from spinal.specs import parse_layers
from spinal.errors import InputError, StoreError
from spinal.lens import Lens
from spinal.outputs import check_writable_dir
from spinal.store.codecs import DEFAULT_CODEC
from spinal.store.contract import Store, decode, sha256_text, storage_dtype
from spinal.store.create import create_store
from spinal.store.layout import TokenLayout, Unit, chunk_sizes, plan_layout
from spinal.store import remote
from spinal.store.location import filesystem, location_state, remove_stray
from spinal.store.lock import StoreLock, check_token, refuse_if_held

log = logging.getLogger(__name__)


@dataclass
class Session:
    """A loaded model bound to an open store: everything needed to capture any of its units."""

    cfg: CaptureConfig
    anatomy: Anatomy
    store: Store
    unit_capture: UnitCapture  # the model, its inputs and the token layout planned in memory
    check: dict | None
    lock: StoreLock | None = None  # held by this session (None: a Ray replica under its driver's lock)
    lock_token: str | None = None  # a replica's: the driver's lock, checked before each unit is written
    write_pool: ThreadPoolExecutor | None = None  # threads encoding and writing a unit's shards (None: one thread)

    def close(self) -> None:
        if self.write_pool is not None:
            self.write_pool.shutdown(wait=True)
            self.write_pool = None
        if self.lock is not None:
            self.lock.release()

    @property
    def layout(self) -> TokenLayout:
        return self.unit_capture.layout

    def recorder(self) -> Recorder:
        return Recorder(self.anatomy.blocks, self.unit_capture.layers, self.unit_capture.dim, self.anatomy.arch)

    def run_unit(self, index: int) -> dict:
        """Capture and write one unit synchronously (cluster actors); returns small metadata only."""
        unit = self.layout.units[index]
        t0 = time.perf_counter()
        with self.recorder() as rec:
            block = self.unit_capture.block(unit, rec)
        if self.lock_token is not None:
            check_token(self.store.path, self.lock_token)
        write_unit(self.store, unit, block, self.write_pool, self.cfg.direct_io)
        return {"unit": index, "tokens": self.layout.stored_tokens(unit), "seconds": time.perf_counter() - t0}


def check_location(cfg: CaptureConfig) -> str:
    """What the capture will do at ``cfg.out`` ('create' or 'resume'), or one refusal; touches nothing.

    ``--resume`` means "finish or start": with no store, an empty folder or a creation that never
    finished, it starts one. A plain run starts one there too, and refuses a finished store.
    ``--overwrite`` replaces only a SPINAL store; anything else at the path is refused.
    """
    remote.refuse_read_only(cfg.out)  # http(s)://: refused before anything is read
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
    if remote.is_remote(path):  # a read-only protocol, a missing bucket; others report their own errors on first write
        remote.check_writable(path, *filesystem(path))
        return
    check_writable_dir(Path(path[len("file://"):] if path.startswith("file://") else path))


def prepare(cfg: CaptureConfig, loaded: Loaded | None = None, lock_token: str | None = None) -> Session:
    """Load, discover, tokenize, plan the token layout, self-check, then create the store (or open it to resume).

    The writer lock is taken before the store is touched and kept by the session; a Ray
    replica passes its driver's ``lock_token`` instead and checks it is still the holder.
    """
    action = check_location(cfg)
    check_writable(cfg.out)
    if lock_token is None:
        refuse_if_held(cfg.out)
    prompts = load_prompts(cfg.prompts, cfg.prompt_options())
    if prompts.conversational and not cfg.chat_template:  # a chat row is a conversation: only its template renders it
        log.warning("the prompts are conversations (%s): rendered with the model's chat template, as "
                    "--chat-template does", prompts.source["layout"])
        cfg = replace(cfg, chat_template=True)
    loaded = loaded or load_for(cfg)
    anatomy = discover(loaded.model)
    layers = parse_layers(cfg.layers, anatomy.n_layers)
    tokd = tokenize(prompts, loaded.tokenizer, max_length=cfg.max_length, chat_template=cfg.chat_template,
                    positions=cfg.stored_positions)
    _check_context(loaded.model, tokd, prompts, cfg.max_length)
    real_dtype = dtype_name(next(loaded.model.parameters()).dtype)
    dim = int(anatomy.unembed.weight.shape[1])
    t_chunk, t_shard = chunk_sizes(dim, np.dtype(storage_dtype(real_dtype)).itemsize, cfg.unit_tokens)
    layout = plan_layout(tokd.stored_ids, tokd.positions, t_chunk=t_chunk, t_shard=t_shard, unit_tokens=cfg.unit_tokens)
    ident = identity(cfg, loaded, prompts, layers, real_dtype)
    arrays = lens_arrays(anatomy)
    check = None
    if action == "resume":  # refuse changed inputs before taking the lock
        check_same(Store.open(cfg.out), ident, cfg.out)
    elif cfg.self_check:  # a refused model never touches the output location
        check = _self_check(loaded, anatomy, arrays, tokd, real_dtype)

    def create() -> Store:
        return _create(cfg.out, layout=layout, layers=layers, dim=dim, dtype=real_dtype,
                       sequences=_sequences(prompts, tokd), lens_arrays=arrays, lens_spec=anatomy.spec,
                       meta=metadata(cfg, loaded, prompts, tokd, ident, check), codec=cfg.codec)

    lock = None
    if lock_token is None:
        lock = StoreLock(cfg.out).acquire()
    else:
        check_token(cfg.out, lock_token)
    try:
        store = _bind(cfg, action, lock, create, ident, layout)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if tokd.truncated.any():
        log.warning("%d of %d prompts were truncated to %d tokens", int(tokd.truncated.sum()),
                    len(tokd.truncated), cfg.max_length)
    unit_capture = UnitCapture(loaded.model, loaded.tokenizer, tokd, layout, tuple(p.id for p in prompts.prompts),
                               tuple(store.layers), int(store.hidden.shape[2]), store.dtype, cfg.batch_size)
    threads = write_threads(cfg.write_threads)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="spinal-shards") if threads > 1 else None
    return Session(cfg, anatomy, store, unit_capture, store.meta.get("self_check"), lock, lock_token, pool)


def write_threads(requested: int) -> int:
    """Threads for a unit's shard writes: ``requested``, or with 0 one per core this process may run on."""
    if requested:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _bind(cfg: CaptureConfig, action: str, lock: StoreLock | None, create: Callable[[], Store], ident: dict,
          layout: TokenLayout) -> Store:
    """Under the writer lock: create the store, or reopen it to resume if its inputs and layout are these."""
    # Re-read the location under the lock: another writer may have made the store meanwhile.
    if location_state(cfg.out) == "ready" and not cfg.overwrite:
        if action == "create" and not cfg.resume and lock is not None:
            raise StoreError(f"{cfg.out} was created by another capture meanwhile; rerun with --resume")
        action = "resume"
    if action == "create":
        if lock is not None:
            lock.check()
        return create()
    store = Store.open(cfg.out, mode="r+")
    check_same(store, ident, cfg.out)
    check_same_layout(store, layout, cfg.out)
    if store.meta.get("codec", DEFAULT_CODEC) != cfg.codec:
        log.warning("%s was created with codec %s: its remaining units are written with it, not %s",
                    cfg.out, store.meta.get("codec", DEFAULT_CODEC), cfg.codec)
    if lock is not None:
        n, size = remove_stray(cfg.out)
        if n:
            log.warning("removed %d temporary file(s) (%.1f MB) left by killed writers", n, size / 1e6)
    return store


# The self-check's probe: the first two prompts cut to at most these many tokens. Two lengths, so that a batch of
# long prompts is still right-padded (the mask is part of what is checked); short, because the probe runs the full
# model with its vocabulary head before the first unit, where nothing overlaps it (GPT-2-small on 2 cores: 1.6 s
# for two whole 217-token prompts, of a 65 s capture).
PROBE_TOKENS = (64, 48)


def _self_check(loaded: Loaded, anatomy: Anatomy, arrays: dict, tokd: Tokenized, real_dtype: str) -> dict:
    """The lens and the hooks against the model itself on a probe batch: the first two prompts, cut short."""
    lens = Lens.from_arrays(anatomy.spec, {k: decode(arr, real) for k, (arr, real) in arrays.items()})
    probe = tuple(ids[:cap] for ids, cap in zip(tokd.input_ids, PROBE_TOKENS))
    probe_tokd = replace(tokd, input_ids=probe, positions=tuple(() for _ in probe))
    ids, mask, _ = batch_inputs(probe_tokd, list(range(len(probe))), loaded.tokenizer, input_device(loaded.model))
    check = run_self_check(loaded.model, anatomy, lens, ids, mask, real_dtype).to_dict()
    log.info("self-check passed: %s", check)
    return check


def _sequences(prompts: PromptSet, tokd: Tokenized) -> dict[str, np.ndarray]:
    """The sequences table's columns that come from the prompts (the layout gives offset, length and unit)."""
    return {
        "prompt_id": np.array([p.id for p in prompts.prompts], dtype=object),
        "text_hash": np.array([sha256_text(_text(p)) for p in prompts.prompts],
                              dtype=object),
        "input_length": tokd.input_length,
        "truncated": tokd.truncated,
    }


def _text(p) -> str:
    """A prompt's texts for its hash: prompt and reply (and, for a chat, every turn of the conversation)."""
    text = p.prompt + "\x00" + (p.response or "")
    return text if not p.conversation else text + "\x00" + json.dumps([list(t) for t in p.conversation])


def _create(path: str, **kw) -> Store:
    """``create_store`` with a failed write said in one line (nothing beyond the location was touched)."""
    try:
        return create_store(path, **kw)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StoreError(f"disk full while creating {path}; nothing else was touched: free space "
                             "and rerun (with --resume, or not)") from None
        raise StoreError(f"creating {path} failed: {e.strerror or e}") from None


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


def write_unit(store: Store, unit: Unit, block: np.ndarray, pool: ThreadPoolExecutor | None = None,
               direct: bool = True) -> None:
    """``Store.write_unit``, with a failed write said in one line naming the unit (disk full: resume later)."""
    try:
        store.write_unit(unit, block, pool, direct)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StoreError(
                f"disk full while writing unit {unit.index} (tokens {unit.token_start}–{unit.token_stop}) "
                f"of {store.path}; finished units are kept: free space and rerun with --resume"
            ) from None
        raise StoreError(f"writing unit {unit.index} of {store.path} failed: {e}") from None
