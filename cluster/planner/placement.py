"""Where a replica's weights go: the smallest GPUs-per-replica whose device map keeps every module on a GPU.

GPUs per replica come from accelerate's own device-map inference, run exactly as
``from_pretrained(device_map="auto", max_memory=…)`` runs it in capture/load.py
(``get_balanced_memory`` then ``infer_auto_device_map``), so the map printed is the map a
replica gets.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

from torch import nn

from spinal.cluster.planner.config import GIB, PlanConfig
from spinal.capture.discover import block_list, text_config
from spinal.cluster.planner.presets import MetaModel, ModelFacts
from spinal.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    gpus_per_replica: int
    replicas_per_node: int
    replicas: int
    idle_gpus_per_node: int
    activation_gib: float  # per-batch activation estimate (one block's peak)
    reserve_gib: float  # headroom + activations, kept free on every GPU
    max_memory: dict  # as passed to accelerate: {gpu: "xxGiB"[, "cpu": …]}
    device_map: dict  # accelerate's exact map: module name -> gpu index, "cpu" or "disk"
    devices: tuple  # per device: {"device", "gib", "holds"}
    offloaded: tuple  # module names placed on cpu/disk (empty unless allow_offload)



def activation_bytes(model: nn.Module, batch_size: int, seq_len: int, itemsize: int) -> int:
    """Peak activations of one block's forward pass under no_grad, a deliberate over-estimate.

    Per token: 5 × hidden (residual, norm output, attention output, sum, the hook's selected
    copy), q/k/v, and 3 × intermediate (gate, up, their product); plus the batch × 1 × seq × seq
    attention mask. Through SDPA (transformers' default, which capture keeps) the per-head
    probabilities are never materialized; an eager-attention model would need batch × heads ×
    seq² more, so raise headroom_gib for one.
    """
    cfg = text_config(model)
    d, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hd = int(getattr(cfg, "head_dim", None) or d // heads)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * d)
    per_token = 5 * d + (heads + 2 * kv) * hd + 3 * inter
    return (batch_size * seq_len * per_token + batch_size * seq_len**2) * itemsize


class _DropDeviceWarnings(logging.Filter):
    """accelerate warns "Device 0 is not available" on a machine without those GPUs: planning is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not available, available devices are" not in record.getMessage()


@contextlib.contextmanager
def _quiet_accelerate():
    logger, flt = logging.getLogger("accelerate.utils.modeling"), _DropDeviceWarnings()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def infer_device_map(model: nn.Module, max_memory: dict) -> dict:
    """accelerate's map for ``max_memory``, computed as transformers' ``device_map="auto"`` does (balanced)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = sorted(model._no_split_modules or [])
    with _quiet_accelerate():
        balanced = get_balanced_memory(model, max_memory=dict(max_memory), no_split_module_classes=no_split)
        return dict(infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split))


def _covers(key: str, part: str) -> bool:
    """Does a device-map key place (all or some of) module ``part``?"""
    return key == "" or part == key or part.startswith(key + ".") or key.startswith(part + ".")


def _parts(model: nn.Module) -> list[tuple[str, str | int]]:
    """The model's placeable parts in order: each block by index, other modules by their own name."""
    prefix, _ = block_list(model)
    out: list[tuple[str, str | int]] = []

    def walk(mod: nn.Module, at: str) -> None:
        for name, child in mod.named_children():
            full = at + name
            if full == prefix:
                out.extend((f"{full}.{i}", i) for i in range(len(child)))
            elif prefix.startswith(full + "."):
                walk(child, full + ".")
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                out.append((full, name))  # modules without weights (dropout) hold nothing worth naming

    walk(model, "")
    return out


def device_name(dev: int | str) -> str:
    return f"cuda:{dev}" if isinstance(dev, int) else str(dev)


def describe_map(model: nn.Module, dmap: dict) -> tuple[dict, ...]:
    """Per device, in map order: its weight GiB and what it holds ("embed_tokens + blocks 0–39")."""
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model)
    devices = list(dict.fromkeys(dmap.values()))
    holds: dict = {d: [] for d in devices}
    for part, label in _parts(model):
        for dev in dict.fromkeys(v for k, v in dmap.items() if _covers(k, part)):
            holds[dev].append(label)
    out = []
    for dev in devices:
        gib = sum(sizes[k] for k, v in dmap.items() if v == dev) / GIB
        out.append({"device": device_name(dev), "gib": round(gib, 2), "holds": _join_parts(holds[dev])})
    return tuple(out)


def _join_parts(labels: list[str | int]) -> str:
    """['embed_tokens', 0, 1, 2, 'norm'] -> 'embed_tokens + blocks 0–2 + norm'."""
    words: list[str] = []
    run: list[int] = []
    for x in labels + [None]:
        if isinstance(x, int) and (not run or x == run[-1] + 1):
            run.append(x)
            continue
        if run:
            words.append(f"block {run[0]}" if len(run) == 1 else f"blocks {run[0]}–{run[-1]}")
            run = [x] if isinstance(x, int) else []
        if isinstance(x, str):
            words.append(x)
    return " + ".join(words)


def place(cfg: PlanConfig, meta: MetaModel, facts: ModelFacts) -> Placement:
    """The smallest GPUs-per-replica whose map keeps every module on a GPU (or the offload plan, if allowed)."""
    itemsize = next(meta.model.parameters()).element_size()  # activations are computed in the weights' dtype
    act_gib = activation_bytes(meta.model, cfg.batch_size, cfg.seq_len, itemsize) / GIB
    reserve = cfg.headroom_gib + act_gib
    usable = math.floor((cfg.gpu_memory_gib - reserve) * 100) / 100
    if usable <= 0:
        raise InputError(
            f"gpu_memory_gib={cfg.gpu_memory_gib:g} leaves nothing after the {reserve:.1f} GiB reserve per GPU "
            f"(headroom_gib {cfg.headroom_gib:g} + {act_gib:.1f} activations for batch {cfg.batch_size} × "
            f"{cfg.seq_len}); lower batch_size, seq_len or headroom_gib"
        )
    counts = [cfg.gpus_per_replica] if cfg.gpus_per_replica else list(range(1, cfg.gpus_per_node + 1))
    chosen = None
    for k in counts:
        mm: dict = {i: f"{usable:.2f}GiB" for i in range(k)}
        dmap = infer_device_map(meta.model, mm)
        spilled = [n for n, v in dmap.items() if v in ("cpu", "disk")]
        log.debug("%d GPU(s) per replica: %d module(s) spill", k, len(spilled))
        if not spilled:
            chosen = (k, mm, dmap, ())
            break
    if chosen is None:
        k = counts[-1]
        if not cfg.allow_offload:
            raise _does_not_fit(cfg, facts, act_gib, usable)
        mm = {i: f"{usable:.2f}GiB" for i in range(k)}
        if cfg.offload_cpu_gib > 0:
            mm["cpu"] = f"{cfg.offload_cpu_gib:g}GiB"
        dmap = infer_device_map(meta.model, mm)
        chosen = (k, mm, dmap, tuple(n for n, v in dmap.items() if v in ("cpu", "disk")))
    k, mm, dmap, offloaded = chosen
    per_node = cfg.gpus_per_node // k
    return Placement(
        gpus_per_replica=k, replicas_per_node=per_node, replicas=per_node * cfg.nodes,
        idle_gpus_per_node=cfg.gpus_per_node - per_node * k, activation_gib=round(act_gib, 3),
        reserve_gib=round(reserve, 3), max_memory={str(d): v for d, v in mm.items()}, device_map=dmap,
        devices=describe_map(meta.model, dmap), offloaded=offloaded,
    )


def _does_not_fit(cfg: PlanConfig, facts: ModelFacts, act_gib: float, usable: float) -> InputError:
    what = (f"{facts.name} in {facts.dtype} needs ~{facts.weight_bytes / GIB:.1f} GiB of weights, plus a "
            f"{cfg.headroom_gib + act_gib:.1f} GiB reserve per GPU (headroom {cfg.headroom_gib:g} + activations "
            f"{act_gib:.1f})")
    if cfg.gpus_per_replica:
        return InputError(
            f"{what}; {cfg.gpus_per_replica} × {cfg.gpu_memory_gib:g} GiB GPUs ({usable:.1f} GiB usable each) cannot "
            "hold it: raise gpus_per_replica (or leave it unset to find the smallest that fits), or allow_offload "
            "(--allow-offload)"
        )
    return InputError(
        f"{what}; a node has {cfg.gpus_per_node} × {cfg.gpu_memory_gib:g} GiB GPUs ({usable:.1f} GiB usable each, "
        f"{cfg.gpus_per_node * usable:.1f} GiB in all): use more GPUs per node, larger GPUs, a smaller dtype, "
        "or allow_offload (--allow-offload)"
    )


def max_memory_flag(p: Placement) -> str:
    """capture's --max-memory value for one replica: '0=76.68GiB,1=76.68GiB'."""
    return ",".join(f"{d}={v}" for d, v in p.max_memory.items())
