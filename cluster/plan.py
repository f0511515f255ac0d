"""`spinal plan`: replicas, device maps, store size and time for a capture, worked out from a model config alone.

The model is built on the meta device (cluster/presets.py), so planning a 70B capture needs
no weights and no GPU. GPUs per replica come from accelerate's own device-map inference, run
exactly as ``from_pretrained(device_map="auto", max_memory=…)`` runs it in capture/load.py
(``get_balanced_memory`` then ``infer_auto_device_map``), so the map printed is the map a
replica gets. Sizes follow the store contract (spinal/store.py); times follow the throughput
assumptions in ``PlanConfig``, which ``Plan.render`` prints so a user can change them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from spinal.cluster.presets import (MetaModel, ModelFacts, block_list, build_meta_model, model_facts, resolve_config,
                                   text_config)
from spinal.config import DTYPES, AnalyzeConfig, CaptureConfig, parse_layers
from spinal.errors import InputError
from spinal.layout import chunk_sizes
from spinal.store import storage_dtype

log = logging.getLogger(__name__)

GIB = 1 << 30
TABLE_BYTES_PER_TOKEN = 3 * 4  # tokens/ids, tokens/sequence, tokens/position: int32 each (spinal/store.py)


def _default(cls: type, name: str) -> Any:
    """One default in one place: the planner's batch, seq_len and bootstrap sizes are capture's and analyze's."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _opt(text: str, default: Any, assumption: bool = False) -> Any:
    return field(default=default, metadata={"help": text, "assumption": assumption})


@dataclass(frozen=True)
class PlanConfig:
    """What to plan: a model, the GPUs at hand, the capture size and the throughput assumptions."""

    model: str = field(metadata={"help": "preset (llama-3-8b, llama-3-70b, qwen2.5-72b, mistral-7b, or its hub id) "
                                         "or a local config.json / checkpoint folder"})
    dtype: str = _opt("weights and activations dtype: bfloat16, float16, float32, or auto (the config's)", "bfloat16")
    gpus_per_node: int = _opt("GPUs in each node (a replica never spans nodes)", 8)
    gpu_memory_gib: float = _opt("memory of one GPU in GiB (total, as torch.cuda.mem_get_info reports it)", 80.0)
    nodes: int = _opt("nodes with GPUs", 1)
    tokens: int = _opt("stored tokens to capture per checkpoint (prompts × stored tokens per prompt)", 512 * 512)
    layers: str = _opt("stored layers: 'all' (embedding output + every block) or capture's list syntax '0,4,8-12'",
                       "all")
    gpus_per_replica: int | None = _opt("GPUs per model replica (unset: the smallest count the weights fit on)", None)
    allow_offload: bool = _opt("plan a replica whose weights spill to CPU/disk when no node holds them on GPUs",
                               False)
    offload_cpu_gib: float = _opt("host RAM per replica for offloaded weights (with allow_offload; the rest: disk)",
                                  0.0)
    headroom_gib: float = _opt("fixed reserve per GPU besides activations: CUDA context, cuBLAS workspace, "
                               "allocator slack", 2.0, True)
    batch_size: int = _opt("sequences per forward pass (sets the activation reserve)", _default(CaptureConfig,
                           "batch_size"), True)
    seq_len: int = _opt("tokens per sequence (activation reserve and attention FLOPs)",
                        _default(CaptureConfig, "max_length"), True)
    unit_tokens: int = _opt("stored tokens per work unit; more replicas than units sit idle",
                            _default(CaptureConfig, "unit_tokens"), True)
    gpu_tflops: float = _opt("peak dense TFLOP/s of one GPU in the compute dtype (default: H100 SXM bf16; "
                             "A100: 312; float32 on an H100: 67)", 989.0, True)
    mfu: float = _opt("fraction of gpu_tflops a forward pass reaches", 0.4, True)
    store_write_gib_s: float = _opt("GiB/s one replica compresses and writes to the store", 1.0, True)
    weight_read_gib_s: float = _opt("GiB/s one replica reads its safetensors at load (and disk-offloaded weights)",
                                    2.0, True)
    host_link_gib_s: float = _opt("GiB/s host→GPU for CPU-offloaded weights, streamed every forward pass", 20.0,
                                  True)
    cpu_cores: int = _opt("CPU cores for the analysis (all nodes together)", 64, True)
    cpu_gflops_f64: float = _opt("GFLOP/s per core, float64 matrix product (the Gram pass)", 30.0, True)
    cpu_gflops_eigh: float = _opt("GFLOP/s per core in LAPACK eigvalsh, counted as 4/3·d³ per call "
                                  "(memory-bound: ~4 on one idle EPYC core at d=4096, less with all cores busy)",
                                  3.0, True)
    cpu_gflops_f32: float = _opt("GFLOP/s per core, float32 matrix product (the logit lens)", 40.0, True)
    lens_tokens: int = _opt("tokens of the transport (lens) pass; 0 = all", _default(AnalyzeConfig, "lens_tokens"),
                            True)
    n_boot: int = _opt("bootstrap resamples per layer (one eigvalsh each)", _default(AnalyzeConfig, "n_boot"), True)
    null_splits: int = _opt("split-halves per layer (two eigvalsh each)", _default(AnalyzeConfig, "null_splits"),
                            True)
    blocks: int = _opt("bootstrap blocks (one d×d float64 scatter each in memory)", _default(AnalyzeConfig, "blocks"),
                       True)

    def __post_init__(self) -> None:
        for name in ("gpus_per_node", "nodes", "tokens", "batch_size", "seq_len", "unit_tokens", "cpu_cores",
                     "blocks"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 1")
        for name in ("lens_tokens", "n_boot", "null_splits", "headroom_gib", "offload_cpu_gib"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 0")
        for name in ("gpu_memory_gib", "gpu_tflops", "store_write_gib_s", "weight_read_gib_s", "host_link_gib_s",
                     "cpu_gflops_f64", "cpu_gflops_eigh", "cpu_gflops_f32"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}={getattr(self, name)}; must be > 0")
        if not 0 < self.mfu <= 1:
            raise InputError(f"mfu={self.mfu}; must be in (0, 1]")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.gpus_per_replica is not None and not 1 <= self.gpus_per_replica <= self.gpus_per_node:
            raise InputError(f"gpus_per_replica={self.gpus_per_replica}; must be 1–{self.gpus_per_node} "
                             f"(gpus_per_node): a replica never spans nodes")
        parse_layers(self.layers, None)


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


@dataclass(frozen=True)
class StoreSize:
    layers: int
    hidden_bytes_per_token: int  # layers × hidden × itemsize
    table_bytes_per_token: int
    bytes_per_token: int
    tokens: int
    total_bytes: int  # raw, before zstd; padding to whole shards excluded
    lens_bytes: int  # unembedding (vocab × hidden) + final norm weight (hidden)
    t_chunk: int
    t_shard: int
    units: int  # ≈ ceil(tokens / unit_tokens): units hold whole sequences


@dataclass(frozen=True)
class CaptureTime:
    flops_per_token: float
    compute_tokens_s: float  # per replica
    write_tokens_s: float  # per replica
    offload_tokens_s: float | None  # per replica, when weights are streamed from CPU/disk
    tokens_s: float  # per replica: the slowest of the above
    bound: str
    active_replicas: int
    load_s: float
    run_s: float
    total_s: float
    gpu_hours: float


@dataclass(frozen=True)
class AnalysisCost:
    gram_flops: float
    eigh_calls: int  # per layer
    eigh_flops: float
    lens_tokens: int
    lens_flops: float
    gram_s: float
    eigh_s: float
    lens_s: float
    total_s: float
    task_memory_gib: float  # one (checkpoint, layer) task's float64 scatters


@dataclass(frozen=True)
class Plan:
    config: PlanConfig
    model: ModelFacts
    placement: Placement
    store: StoreSize
    capture: CaptureTime
    analysis: AnalysisCost

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def render(self) -> str:
        """Human-readable plan, every assumption with its value."""
        return _render(self)


# -- placement ---------------------------------------------------------------------------------------


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


# -- sizes and times ---------------------------------------------------------------------------------


def store_size(cfg: PlanConfig, facts: ModelFacts) -> StoreSize:
    """Raw bytes of one checkpoint's store: ``hidden`` (layer, token, dim) in storage dtype plus token tables."""
    itemsize = np.dtype(storage_dtype(facts.dtype)).itemsize  # bfloat16 is stored as uint16: 2 bytes
    n_layers = len(parse_layers(cfg.layers, facts.blocks + 1))
    hidden = n_layers * facts.hidden * itemsize
    per_token = hidden + TABLE_BYTES_PER_TOKEN
    t_chunk, t_shard = chunk_sizes(facts.hidden, itemsize, cfg.unit_tokens)
    return StoreSize(
        layers=n_layers, hidden_bytes_per_token=hidden, table_bytes_per_token=TABLE_BYTES_PER_TOKEN,
        bytes_per_token=per_token, tokens=cfg.tokens, total_bytes=cfg.tokens * per_token,
        lens_bytes=(facts.vocab + 1) * facts.hidden * itemsize, t_chunk=t_chunk, t_shard=t_shard,
        units=-(-cfg.tokens // cfg.unit_tokens),
    )


def forward_flops_per_token(model: nn.Module, compute_params: int, seq_len: int) -> float:
    """2 × the base model's matmul weights, plus attention scores and values (2 × 2·seq·heads·head_dim per block).

    No lm_head: capture runs ``model.base_model`` only. Attention is counted at full seq_len
    (an upper bound for causal masks).
    """
    cfg = text_config(model)
    heads = int(cfg.num_attention_heads)
    hd = int(getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads)
    return 2.0 * compute_params + 4.0 * int(cfg.num_hidden_layers) * seq_len * heads * hd


def capture_time(cfg: PlanConfig, meta: MetaModel, facts: ModelFacts, p: Placement, s: StoreSize) -> CaptureTime:
    """Tokens/s per replica = the slowest of compute, store writes and (if any) offload streaming.

    A replica's GPUs run its blocks one after another (accelerate's device map is a pipeline
    without overlap), so k GPUs per replica compute at one GPU's rate, not k.
    """
    from accelerate.utils import compute_module_sizes

    flops = forward_flops_per_token(meta.model, facts.compute_params, cfg.seq_len)
    rates = {
        "GPU compute": cfg.gpu_tflops * 1e12 * cfg.mfu / flops,
        "store writes": cfg.store_write_gib_s * GIB / s.bytes_per_token,
    }
    offload = None
    if p.offloaded:
        sizes = {v: 0 for v in ("cpu", "disk")}
        ms = compute_module_sizes(meta.model)
        for k, v in p.device_map.items():
            if v in sizes:
                sizes[v] += ms[k]
        per_batch_s = sizes["cpu"] / (cfg.host_link_gib_s * GIB) + sizes["disk"] / (cfg.weight_read_gib_s * GIB)
        offload = rates["offload streaming"] = cfg.batch_size * cfg.seq_len / per_batch_s
    bound = min(rates, key=rates.get)
    rate = rates[bound]
    active = max(1, min(p.replicas, s.units))
    load_s = facts.weight_bytes / (cfg.weight_read_gib_s * GIB)
    run_s = cfg.tokens / (active * rate)
    total = load_s + run_s
    return CaptureTime(
        flops_per_token=flops, compute_tokens_s=rates["GPU compute"], write_tokens_s=rates["store writes"],
        offload_tokens_s=offload, tokens_s=rate, bound=bound, active_replicas=active, load_s=load_s, run_s=run_s,
        total_s=total, gpu_hours=total * p.replicas * p.gpus_per_replica / 3600,
    )


def analysis_cost(cfg: PlanConfig, facts: ModelFacts, s: StoreSize) -> AnalysisCost:
    """CPU cost of one checkpoint's trace (METHOD.md §2–3), per stored layer:

    - Gram: N·d² float64 (SYRK: the upper triangle only, analyze/gram.py), or 2·N²·d below d
      tokens, where the rows' N×N Gram is used instead;
    - eigvalsh: 4/3·r³ each (r = min(N, d)), for the centered and raw fits, every bootstrap resample and
      both halves of every null split;
    - lens: 2·T·d·V float32 for the T transport tokens (log-softmax and distances are O(T·V)).
    """
    n, d, layers = cfg.tokens, facts.hidden, s.layers
    r = min(n, d)
    gram = layers * (float(n) * d * d if n >= d else 2.0 * n * n * d)
    calls = 2 + cfg.n_boot + 2 * cfg.null_splits
    eigh = layers * calls * (4 / 3) * float(r) ** 3
    t = n if cfg.lens_tokens == 0 else min(cfg.lens_tokens, n)
    lens = layers * 2.0 * t * d * facts.vocab
    cores = cfg.cpu_cores
    gram_s, eigh_s = gram / (cores * cfg.cpu_gflops_f64 * 1e9), eigh / (cores * cfg.cpu_gflops_eigh * 1e9)
    lens_s = lens / (cores * cfg.cpu_gflops_f32 * 1e9)
    # blocks per-block scatters + the merged total + one scratch product, d×d float64 each (analyze/gram.py)
    task_mem = (cfg.blocks + 2) * r * r * 8 / GIB
    return AnalysisCost(gram, calls, eigh, t, lens, gram_s, eigh_s, lens_s, gram_s + eigh_s + lens_s,
                        round(task_mem, 3))


def plan(cfg: PlanConfig, meta: MetaModel | None = None) -> Plan:
    """Plan a capture and its analysis. ``meta``: a model already built from ``cfg.model`` (tests reuse one)."""
    if meta is None:
        meta = build_meta_model(cfg.model, cfg.dtype)
    elif resolve_config(cfg.model)[1] != meta.source or cfg.dtype not in ("auto", meta.dtype):
        raise InputError(f"model={cfg.model!r}, dtype={cfg.dtype!r} but the meta model given is {meta.source} "
                         f"in {meta.dtype}")
    facts = model_facts(meta)
    placement = place(cfg, meta, facts)
    store = store_size(cfg, facts)
    return Plan(cfg, facts, placement, store, capture_time(cfg, meta, facts, placement, store),
                analysis_cost(cfg, facts, store))


# -- text ------------------------------------------------------------------------------------------


def _dur(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def _render(plan: Plan) -> str:
    c, m, p, s, t, a = plan.config, plan.model, plan.placement, plan.store, plan.capture, plan.analysis
    itemsize = (s.hidden_bytes_per_token // (s.layers * m.hidden))
    idle = f"{p.idle_gpus_per_node} GPU(s) idle per node" if p.idle_gpus_per_node else "no GPU idle"
    lines = [
        f"spinal plan: {m.name} ({m.source}) in {m.dtype}",
        "",
        f"model      {m.architecture}: {m.blocks} blocks, hidden {m.hidden:,}, vocab {m.vocab:,}",
        f"           {m.params / 1e9:.2f} B parameters ({m.compute_params / 1e9:.2f} B in the base model's matmuls), "
        f"{m.weight_bytes / GIB:.1f} GiB of weights",
        f"GPUs       {c.nodes} node(s) × {c.gpus_per_node} GPU(s) × {c.gpu_memory_gib:g} GiB; "
        f"{p.reserve_gib:.1f} GiB kept free per GPU (headroom {c.headroom_gib:g} + activations "
        f"{p.activation_gib:.1f} for batch {c.batch_size} × {c.seq_len})",
        f"replicas   {p.gpus_per_replica} GPU(s) per replica → {p.replicas_per_node} per node, {p.replicas} in all "
        f"({idle})",
        f"device map of each replica (capture --max-memory {max_memory_flag(p)}):",
    ]
    lines += [f"             {d['device']:<7} {d['gib']:6.1f} GiB  {d['holds']}" for d in p.devices]
    if p.offloaded:
        lines.append(f"           OFFLOAD: {len(p.offloaded)} module(s) on cpu/disk, streamed to the GPUs every "
                     "forward pass (capture needs --allow-offload too)")
    lines += [
        f"store      {s.layers} layers × {m.hidden:,} × {itemsize} B + {s.table_bytes_per_token} B token tables "
        f"= {s.bytes_per_token:,} B per token ({s.bytes_per_token / 2**20:.2f} MiB)",
        f"           {s.tokens:,} tokens → {s.total_bytes / GIB:,.1f} GiB per checkpoint raw (zstd shrinks it "
        f"somewhat) + lens {s.lens_bytes / GIB:.2f} GiB",
        f"           chunks of {s.t_chunk} tokens, shards of {s.t_shard}; ≈ {s.units:,} work unit(s) of "
        f"{c.unit_tokens:,} tokens",
        f"capture    {t.flops_per_token / 1e9:,.1f} GFLOP per token; per replica {t.compute_tokens_s:,.0f} tokens/s "
        f"from compute, {t.write_tokens_s:,.0f} from store writes"
        + (f", {t.offload_tokens_s:,.0f} from offload streaming" if t.offload_tokens_s is not None else "")
        + f": bound by {t.bound}",
        f"           {t.active_replicas} replica(s) busy: {_dur(t.load_s)} loading weights + {_dur(t.run_s)} "
        f"capturing = {_dur(t.total_s)}, {t.gpu_hours:,.2f} GPU-hours per checkpoint",
        f"analysis   per checkpoint on {c.cpu_cores} cores: Gram {_si(a.gram_flops)}FLOP ({_dur(a.gram_s)}), "
        f"{a.eigh_calls} eigvalsh per layer {_si(a.eigh_flops)}FLOP ({_dur(a.eigh_s)}),",
        f"           lens over {a.lens_tokens:,} tokens {_si(a.lens_flops)}FLOP ({_dur(a.lens_s)}) → "
        f"{_dur(a.total_s)}; one layer task holds {a.task_memory_gib:.1f} GiB of float64 scatters",
        "",
        "assumptions (PlanConfig fields; change any of them):",
    ]
    for f in dataclasses.fields(c):
        if f.metadata.get("assumption"):
            lines.append(f"  {f.name:<18} = {getattr(c, f.name):<8g}  {f.metadata['help']}")
    if m.dtype == "float32" and c.gpu_tflops == 989.0:
        lines.append("  note: gpu_tflops 989 is a bf16 peak; float32 matmuls run at ~67 TFLOP/s on an H100")
    return "\n".join(lines)
