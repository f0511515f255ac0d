"""Load a checkpoint safely (safetensors only, no remote code unless asked), shard it with accelerate, fingerprint it."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from spinal.capture.gguf import is_gguf, parse_once, quantization
from spinal.checkpoint import Snapshot, fingerprint, is_hub_id, snapshot
from spinal.config import CaptureConfig
from spinal.dtypes import torch_dtype
from spinal.errors import InputError, ModelError, first_line, need, what_is_at

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    source: dict  # provenance: path, revision/fingerprint, architecture, config


def parse_max_memory(spec: str | None) -> dict | None:
    """'0=70GiB,1=70GiB,cpu=200GiB' -> {0: '70GiB', 1: '70GiB', 'cpu': '200GiB'} (accelerate's syntax)."""
    if not spec:
        return None
    out: dict = {}
    for part in spec.split(","):
        if "=" not in part:
            raise InputError(f"--max-memory {spec!r}: expected DEVICE=SIZE pairs like '0=70GiB,cpu=200GiB'")
        k, v = (s.strip() for s in part.split("=", 1))
        out[int(k) if k.isdigit() else k] = v
    gpus = [k for k in out if isinstance(k, int)]
    have = torch.cuda.device_count()
    if gpus and max(gpus) >= have:
        raise InputError(f"--max-memory {spec!r} names GPU(s) {', '.join(map(str, gpus))}, but this machine has "
                         f"{have or 'no'} GPU{'s' * (have != 1)} (torch.cuda.device_count() = {have}): run it where "
                         "the GPUs are, or leave out --max-memory and --device-map")
    return out


def check_checkpoint(path: str, *, allow_pickle: bool, trust_remote_code: bool, revision: str | None = None
                     ) -> Path:
    """Refuse what we must not load, before any weights are read. Returns the local folder (or GGUF file): for a
    hub id its snapshot in the Hugging Face cache at ``revision``, checked as a folder is."""
    return check_local(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, revision=revision)[0]


def check_local(path: str, *, allow_pickle: bool, trust_remote_code: bool, revision: str | None = None
                ) -> tuple[Path, Snapshot | None]:
    """``check_checkpoint``, and the hub snapshot the folder is (None for a local path)."""
    p = Path(path).expanduser()
    snap = None
    if not p.exists():
        if what_is_at(p) != "nothing":  # a symlink loop or a dangling link: a local path gone wrong, never a Hub id
            need(p, "folder", "model folder")
        if not is_hub_id(path):
            raise InputError(f"model folder {path} does not exist")
        try:
            snap = snapshot(path, revision=revision, allow_pickle=allow_pickle)
        except InputError as e:  # a mistyped local path reads as an id too: say both
            raise InputError(f"no local folder {path}, and {e}") from None
        p, path = snap.folder, f"{path} (cached snapshot {snap.folder})"
    elif revision:
        raise InputError(f"--revision {revision}: {path} is a local path, one version already; a revision chooses "
                         "among a Hub id's (leave it out, or give the id)")
    return _check_path(p, path, allow_pickle, trust_remote_code), snap


def _check_path(p: Path, path: str, allow_pickle: bool, trust_remote_code: bool) -> Path:
    """The folder or GGUF file ``p`` (called ``path`` in messages), refused if it must not be loaded."""
    if is_gguf(p):
        quantization(p)  # the header and tensor table read back (and the gguf package is there)
        return p
    if not p.is_dir():
        raise InputError(f"model path {path} is a file but not a GGUF one; give the checkpoint folder (with "
                         "config.json) or a .gguf file")
    if not (p / "config.json").exists():
        raise InputError(f"{path} has no config.json; is this a Hugging Face checkpoint folder?")
    safe = list(p.glob("*.safetensors"))
    pickles = [f for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if not safe and not pickles:
        raise InputError(f"{path} holds no weights (no *.safetensors, no *.bin)")
    if not safe and not allow_pickle:
        raise ModelError(
            f"{path} has only pickle weights ({', '.join(f.name for f in pickles[:3])}); pickles can run code "
            "when loaded: convert to safetensors, or pass --allow-pickle if you trust the source"
        )
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{p / 'config.json'} is not valid JSON ({e}); is the checkpoint folder intact?") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{p / 'config.json'} holds no JSON object; is the checkpoint folder intact?")
    for f in safe:  # a torn or foreign weights file is named before transformers reads it
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:
            raise ModelError(f"{f} is not a readable safetensors file ({first_line(e)}); re-download or "
                             "re-save the checkpoint") from None
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"{path} needs its own Python code (auto_map in config.json); pass --trust-remote-code if you trust it"
        )
    return p


def load_for(cfg: CaptureConfig) -> Loaded:
    """The checkpoint a capture config names: its model (and adapter), dtype, device map and safety switches."""
    return load(cfg.model, revision=cfg.revision, adapter=cfg.adapter, dtype=cfg.dtype, device_map=cfg.device_map,
                max_memory=cfg.max_memory, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
                allow_offload=cfg.allow_offload)


def load(
    path: str,
    *,
    revision: str | None = None,
    adapter: str | None = None,
    dtype: str = "auto",
    device_map: str | None = None,
    max_memory: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    allow_offload: bool = False,
) -> Loaded:
    """The checkpoint at ``path`` (a folder, a .gguf file or a hub id at ``revision``, read from its cached
    snapshot), checked before any weights are read, with ``adapter`` merged in, in eval mode, and what identifies
    it (``Loaded.source``)."""
    folder, snap = check_local(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                               revision=revision)
    if snap is not None:
        log.info("%s at %s: reading its snapshot %s", path, snap.commit[:12], snap.folder)
    kwargs = _model_options(dtype, device_map, max_memory, trust_remote_code, allow_pickle)
    where: dict = {}
    if folder.is_file():  # GGUF: transformers dequantizes it; its tokenizer is inside
        kwargs.pop("use_safetensors", None)
        where = {"gguf_file": folder.name}
    model, tokenizer = _from_pretrained(str(folder.parent if where else folder), kwargs, where, trust_remote_code,
                                        name=path)
    adapter_source = None
    if adapter:
        model, adapter_source = merge_adapter(model, adapter)
    model.eval()
    refuse_offload(model, allow_offload)
    source = _source(model, tokenizer, folder, path, where, kwargs["device_map"], adapter_source)
    if snap is not None:  # the commit the id resolved to, and where its snapshot was read
        source["revision"], source["hub"] = snap.commit, snap.record()
    return Loaded(model, tokenizer, source)


def _model_options(dtype: str, device_map: str | None, max_memory: str | None, trust_remote_code: bool,
                   allow_pickle: bool) -> dict:
    """``from_pretrained``'s keyword arguments: dtype, device map (default: one GPU, else the CPU), memory caps
    and the safety switches."""
    mm = parse_max_memory(max_memory)
    if device_map is None:
        device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    if dtype == "auto" and (device_map == "cpu" or (device_map == "auto" and not torch.cuda.is_available())):
        dtype = "float32"  # CPUs have no fast bf16 matmul: a bf16 capture ran 5.5× slower than float32 here
        log.info("dtype auto on CPU: computing in float32 (pass --dtype bfloat16 to keep a bf16 checkpoint's dtype)")
    kwargs = dict(
        dtype="auto" if dtype == "auto" else torch_dtype(dtype),
        device_map=device_map,
        trust_remote_code=trust_remote_code,
    )
    if mm:
        kwargs["max_memory"] = mm
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    return kwargs


def _from_pretrained(path: str, kwargs: dict, where: dict, trust_remote_code: bool, name: str) -> tuple:
    """(model, tokenizer) from the local folder ``path`` through transformers, a failure of either said in one
    line naming the checkpoint as given (``name``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with parse_once() if where else contextlib.nullcontext():  # a GGUF is parsed once, not four times
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **where)
        except Exception as e:
            raise ModelError(f"{name}: cannot load the tokenizer ({first_line(e, typed=True)})") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **where)
        except Exception as e:  # transformers and safetensors raise many kinds for a damaged checkpoint
            raise ModelError(f"{name}: cannot load the model ({first_line(e, typed=True)})") from None
    return model, tokenizer


def _source(model: torch.nn.Module, tokenizer, folder: Path, path: str, where: dict, device_map: str,
            adapter_source: dict | None) -> dict:
    """Provenance of a loaded model: where from, architecture, dtype, device map, config, tokenizer and the
    weights' fingerprint (with an adapter, of the merged weights: base and adapter together)."""
    cfg = model.config
    source = {
        "model": str(folder) if where else path,
        "architecture": type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "revision": getattr(cfg, "_commit_hash", None),
        "weights_fingerprint": fingerprint(folder),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device_map": {str(k): str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()} or device_map,
        "config": cfg.to_dict(),
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "vocab_size": getattr(tokenizer, "vocab_size", None),
            "fingerprint": tokenizer_fingerprint(tokenizer),
        },
    }
    if where:
        source["weights_format"] = quantization(folder)
    if adapter_source:  # the store's identity is the merged weights': base and adapter fingerprints together
        source["adapter"] = adapter_source
        source["base_weights_fingerprint"] = source["weights_fingerprint"]
        both = f"{source['weights_fingerprint']}+{adapter_source['fingerprint']}"
        source["weights_fingerprint"] = "merged:" + hashlib.sha256(both.encode()).hexdigest()
    return source


def check_adapter(path: str) -> Path:
    """A PEFT adapter folder: adapter_config.json and safetensors weights, refused by name otherwise."""
    p = Path(path).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise InputError(f"--adapter {path}: no adapter_config.json there; give a PEFT adapter folder")
    if not (p / "adapter_model.safetensors").is_file():
        raise ModelError(f"--adapter {path}: no adapter_model.safetensors (pickle adapters are not loaded)")
    if importlib.util.find_spec("peft") is None:
        raise InputError(f"--adapter {path}: merging an adapter needs the peft package: pip install peft")
    return p


def merge_adapter(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, dict]:
    """The base model with the adapter merged into its weights (in memory), and what identifies the adapter."""
    from peft import PeftModel

    p = check_adapter(path)
    try:
        cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        merged = PeftModel.from_pretrained(model, str(p)).merge_and_unload()
    except Exception as e:  # a shape mismatch (another base), a torn file, an unknown PEFT type
        raise ModelError(f"--adapter {path} cannot be merged into this model ({first_line(e, typed=True)}); is "
                         "MODEL its base?") from None
    keep = ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path")
    return merged, {"path": str(p), "fingerprint": fingerprint(p), **{k: cfg.get(k) for k in keep}}


def refuse_offload(model: torch.nn.Module, allow_offload: bool) -> None:
    dmap = getattr(model, "hf_device_map", None) or {}
    places = {str(v) for v in dmap.values()}
    on_gpu = any(p not in ("cpu", "disk") for p in places)
    spilled = sorted(k for k, v in dmap.items() if str(v) in ("cpu", "disk"))
    if on_gpu and spilled and not allow_offload:
        raise ModelError(
            f"the device map spills {len(spilled)} module(s) to CPU/disk (e.g. {spilled[:3]}): this replica would "
            "run at offload speed; give it more GPUs (--max-memory / GPUs per replica) or pass --allow-offload"
        )


def tokenizer_fingerprint(tok) -> str:
    try:
        vocab = tok.get_vocab()
    except Exception:
        return "unknown"
    h = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return h.hexdigest()[:16]
