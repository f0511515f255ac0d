"""All per-architecture knowledge: find the decoder blocks, the final norm and the readout, and describe the lens.

Discovery is generic (the one ModuleList of ``num_hidden_layers`` blocks under the base model,
the norm module beside it, ``get_output_embeddings()``); the lens spec is not guessed from class
names but *probed*: each candidate formula is checked against the norm module's own output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spinal.blocks import pick
from spinal.dtypes import CAPTURED, canonical
from spinal.errors import ModelError
from spinal.lens import Lens, LensSpec
from spinal.store.contract import encode

# Attribute names of final norms across families (Llama/Mistral/Qwen2/Gemma/Phi-3: norm,
# GPT-2: ln_f, GPT-NeoX: final_layer_norm, Phi-1/2: final_layernorm, OPT: decoder.final_layer_norm).
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm", "norm_f")


@dataclass(frozen=True)
class Anatomy:
    """Where the parts of a causal LM are."""

    arch: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    spec: LensSpec

    @property
    def n_layers(self) -> int:
        """Stored layers: the embedding output (0) plus one per block."""
        return len(self.blocks) + 1


def text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name in ``model``, blocks): the shallowest nn.ModuleList of num_hidden_layers modules under the base
    model (spinal/blocks.py's rule)."""
    cfg = text_config(model)
    n_blocks = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    base = getattr(model, "base_model", model)
    lists = {name: m for name, m in base.named_modules() if isinstance(m, nn.ModuleList)}
    name = pick(((n, len(m)) for n, m in lists.items()), n_blocks)
    if name is None:
        raise ModelError(
            f"{type(model).__name__}: no decoder block list found (looked for an nn.ModuleList of "
            f"num_hidden_layers={n_blocks} modules under {type(base).__name__})"
        )
    prefix = next((n for n, m in model.named_modules() if m is base), "")
    return (f"{prefix}.{name}" if prefix else name), lists[name]


def discover(model: nn.Module) -> Anatomy:
    arch = type(model).__name__
    cfg = text_config(model)
    blocks_name, blocks = block_list(model)
    norm = _find_norm(model, blocks_name)
    if norm is None:
        raise ModelError(
            f"{arch}: no final norm found beside '{blocks_name}' (looked for attributes {list(_NORM_NAMES)})"
        )
    unembed = model.get_output_embeddings()
    if unembed is None or not hasattr(unembed, "weight"):
        raise ModelError(f"{arch}: get_output_embeddings() returned no weight; cannot build the logit lens")
    spec = _probe_spec(arch, norm, cfg, unembed)
    return Anatomy(arch, blocks, norm, unembed, spec)


def _find_norm(model: nn.Module, blocks_name: str) -> nn.Module | None:
    """The final norm: an attribute of the block list's parent (or of the base model)."""
    parent_name = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    for holder in (parent, getattr(model, "base_model", model)):
        for name in _NORM_NAMES:
            m = getattr(holder, name, None)
            if isinstance(m, nn.Module):
                return m
    return None


def _norm_eps(norm: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        v = getattr(norm, name, None)
        if isinstance(v, (float, int)):
            return float(v)
    return None


def _probe_spec(arch: str, norm: nn.Module, cfg, unembed: nn.Module) -> LensSpec:
    """Find the LensSpec whose norm formula reproduces the model's own final norm module."""
    eps = _norm_eps(norm)
    if eps is None:
        raise ModelError(f"{arch}: final norm {type(norm).__name__} has no eps/variance_epsilon attribute")
    w = getattr(norm, "weight", None)
    b = getattr(norm, "bias", None)
    probe = copy.deepcopy(norm).to(device="cpu", dtype=torch.float32)
    d = unembed.weight.shape[1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, d, generator=gen) * torch.linspace(0.1, 30.0, 8)[:, None] + 0.5
    with torch.no_grad():
        want = probe(x)
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = 1.0
    if getattr(cfg, "logit_scale", None):  # Cohere: logits · logit_scale
        scale = float(cfg.logit_scale)
    elif getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
        scale = 1.0 / float(cfg.logits_scaling)
    ub = getattr(unembed, "bias", None)
    arrays = {
        "unembed": torch.zeros(1, d),
        "norm_weight": None if w is None else probe.weight.detach(),
        "norm_bias": None if b is None else probe.bias.detach(),
    }
    for kind in ("rms", "layer"):
        for offset in (0.0, 1.0):
            spec = LensSpec(
                norm=kind, eps=eps, weight_offset=offset, logit_softcap=float(cap) if cap else None,
                logit_scale=scale, has_norm_bias=b is not None, has_unembed_bias=ub is not None,
            )
            got = Lens(spec, arrays["unembed"], arrays["norm_weight"], arrays["norm_bias"]).normalize(x)
            # float32 recomputation of the same formula agrees to rounding (~1e-6 relative);
            # a wrong formula (offset, mean-centering) is off by O(1).
            if torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
                return spec
    raise ModelError(
        f"{arch}: final norm {type(norm).__name__} matches none of RMSNorm/LayerNorm with weight "
        "offset 0 or 1; the logit lens cannot be described as data for this architecture"
    )


def lens_arrays(anatomy: Anatomy) -> dict[str, tuple[np.ndarray, str]]:
    """The lens parameters, each in its own dtype, encoded for the store (bf16 as raw bits)."""
    out = {"unembed": anatomy.unembed.weight}
    w = getattr(anatomy.final_norm, "weight", None)
    if w is not None:
        out["norm_weight"] = w
    b = getattr(anatomy.final_norm, "bias", None)
    if b is not None:
        out["norm_bias"] = b
    ub = getattr(anatomy.unembed, "bias", None)
    if ub is not None:
        out["unembed_bias"] = ub
    result = {}
    for k, v in out.items():
        real = dtype_name(v.dtype)
        result[k] = (encode(v.detach().to("cpu"), real), real)
    return result


def dtype_name(dtype: torch.dtype) -> str:
    """The stored name of a parameter or activation dtype; refused unless it is one stores hold."""
    name = canonical(dtype)
    if name not in CAPTURED:
        raise ModelError(f"dtype {dtype} is not supported for lossless storage; use {', '.join(CAPTURED)}")
    return name
