"""Weightless meta-device models for `spinal plan`, from a preset, a local config.json or a Hub id's cached one, and
the facts read off them.

No weights are read: a preset is the published ``config.json`` written out below, a Hub id's is read from its
snapshot in the local Hugging Face cache (only config.json is fetched where it is not cached), and
``accelerate.init_empty_weights`` puts every parameter on the meta device, so a 70B model
costs seconds and no memory. The shapes, dtypes and module tree are the real ones, which
is all that accelerate's device-map inference and the planner's sizes need.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spinal.capture.discover import block_list, text_config
from spinal.capture.gguf import gguf_config, is_gguf
from spinal.dtypes import CAPTURED, torch_dtype
from spinal.errors import InputError, first_line
from spinal.checkpoint import is_hub_id, snapshot

log = logging.getLogger(__name__)

# The published config.json values of each preset (hub id -> config). Keys that only matter
# for generation or tokenization (bos/eos ids, chat templates) are left out.
PRESETS: dict[str, dict[str, Any]] = {
    "meta-llama/Meta-Llama-3-8B": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
    ),
    "meta-llama/Meta-Llama-3-70B": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
    ),
    "Qwen/Qwen2.5-72B": dict(
        model_type="qwen2", hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=152064, max_position_embeddings=131072,
        rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
        sliding_window=131072, use_sliding_window=False, max_window_layers=80,
    ),
    "mistralai/Mistral-7B-v0.1": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
        sliding_window=4096,
    ),
}

# Short names users type; the hub id and the part after "/" also match (case-insensitive).
ALIASES = {
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama-3-70b": "meta-llama/Meta-Llama-3-70B",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
}

@dataclass(frozen=True)
class MetaModel:
    """A causal LM on the meta device, with where its config came from."""

    name: str  # display name, e.g. "Meta-Llama-3-70B"
    source: str  # "preset meta-llama/Meta-Llama-3-70B" or the config.json path
    dtype: str  # the dtype its parameters were built in
    config: dict  # the config as given (preset dict or config.json)
    model: nn.Module


def preset_names() -> list[str]:
    return sorted(ALIASES) + sorted(PRESETS)


def find_preset(name: str) -> str | None:
    """Hub id of the preset called ``name`` (hub id, its last part, or an alias; any case), else None."""
    key = name.strip().lower()
    for hub_id in PRESETS:
        if key in (hub_id.lower(), hub_id.split("/")[-1].lower()):
            return hub_id
    return ALIASES.get(key)


def resolve_config(model: str, revision: str | None = None) -> tuple[str, str, dict]:
    """``model`` (a preset name, a config.json, a folder holding one, or a Hub id at ``revision``) -> (name,
    source, config dict). A preset's id plans the preset, with no cache or network."""
    path = Path(model).expanduser()
    if is_hub_id(model) and find_preset(model) is None:
        snap = snapshot(model, revision=revision, files=("config.json",))
        path = snap.folder / "config.json"
        if not path.is_file():
            raise InputError(f"the model {model} has no config.json in its cached snapshot {snap.folder}")
        return model.split("/")[-1], f"{model} at {snap.commit[:12]} ({path})", _read_config(path)
    if is_gguf(path):
        return path.stem, f"GGUF {path}", gguf_config(path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise InputError(f"model folder {model} has no config.json")
    if path.is_file():
        cfg = _read_config(path)
        name = cfg.get("_name_or_path") or path.parent.name or path.stem
        return str(name).rstrip("/").split("/")[-1], str(path), cfg
    hub_id = find_preset(model)
    if hub_id is None:
        raise InputError(
            f"model {model!r} is neither a preset nor a local config.json or checkpoint folder; "
            f"presets: {', '.join(preset_names())}"
        )
    return hub_id.split("/")[-1], f"preset {hub_id}", dict(PRESETS[hub_id])


def _read_config(path: Path) -> dict:
    """A Hugging Face config.json, refused in one line unless it is one the planner can build."""
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a JSON config ({e})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise InputError(f"{path} has no 'model_type'; is it a Hugging Face config.json?")
    if cfg.get("auto_map"):
        raise InputError(f"{path} needs its model's own Python code (auto_map); the planner does not run it")
    return cfg


def config_dtype(cfg: dict) -> str:
    """The dtype a config says its weights are stored in (float32 when it says nothing, as transformers does)."""
    d = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return d if d in CAPTURED else "float32"


def build_meta_model(model: str, dtype: str = "auto", revision: str | None = None) -> MetaModel:
    """Resolve ``model`` (at ``revision``, a Hub id) and build it on the meta device in ``dtype`` ("auto": the
    config's own dtype)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    name, source, cfg = resolve_config(model, revision)
    real = config_dtype(cfg) if dtype == "auto" else dtype
    if real not in CAPTURED:
        raise InputError(f"dtype={dtype!r}; choose one of auto, {', '.join(CAPTURED)}")
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "torch_dtype", "dtype", "transformers_version")}
    try:
        hf_cfg = AutoConfig.for_model(cfg["model_type"], **kw)
        with init_empty_weights():
            net = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch_dtype(real))
        # init_empty_weights re-registers every parameter, which leaves tied embeddings untied (two
        # copies: the map would place lm_head apart from the embedding and count it twice). Tie them
        # again as a real load does.
        net.tie_weights()
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{source}: cannot build a causal LM from this config ({first_line(e)})") from None
    log.debug("built %s (%s) on the meta device in %s", name, source, real)
    return MetaModel(name, source, real, cfg, net.eval())


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs to know about a model, read off its meta-device build."""

    name: str
    source: str
    architecture: str
    dtype: str
    blocks: int
    hidden: int
    vocab: int
    params: int  # unique parameters
    compute_params: int  # without input embedding and lm_head: the base model's matmul weights
    weight_bytes: int  # parameters and buffers as accelerate counts them


def model_facts(meta: MetaModel) -> ModelFacts:
    """Sizes and parameter counts of a meta model (no weights are touched: shapes only)."""
    from accelerate.utils import compute_module_sizes

    m = meta.model
    cfg = text_config(m)
    params = sum(p.numel() for p in m.parameters())  # shared (tied) parameters counted once
    emb = m.get_input_embeddings().weight
    head = m.get_output_embeddings()
    head_n = 0 if head is None or head.weight is emb else head.weight.numel()
    _, blocks = block_list(m)
    return ModelFacts(
        meta.name, meta.source, type(m).__name__, meta.dtype, len(blocks), int(cfg.hidden_size),
        int(emb.shape[0]), params, params - emb.numel() - head_n, int(compute_module_sizes(m)[""]),
    )
