"""The cost model of a plan: raw store bytes, capture throughput and time, the analysis' CPU FLOPs and time.

Sizes follow spinal/store/contract.py; times follow the throughput assumptions in ``PlanConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from spinal.analyze.contraction import calibration
from spinal.capture.discover import text_config
from spinal.cluster.planner.config import GIB, PlanConfig, write_rate
from spinal.cluster.planner.placement import Placement
from spinal.cluster.planner.presets import MetaModel, ModelFacts
from spinal.specs import parse_layers
from spinal.store.layout import chunk_sizes
from spinal.store.contract import storage_dtype

# An eigvalsh's share of a layer's eigh + eigvalsh (the rate PlanConfig holds): 0.30–0.31 at d = 576 and 1024 on
# one core here (numpy/OpenBLAS, 2026-12-06); the calibration's solves are eigvalsh only (analyze/contraction/calibration.py).
EIGVALSH_SHARE = 0.3
TABLE_BYTES_PER_TOKEN = 3 * 4  # tokens/ids, tokens/sequence, tokens/position: int32 each (spinal/store/contract.py)


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
class WriteSpeed:
    """How fast one replica writes its store: measured per core × the cores it has × the measured scaling, or
    the whole rate as given (``store_write_gib_s``)."""

    gib_s: float
    codec: str
    per_core: float | None  # None: the rate was given as a whole
    cores: int
    scaling: float


def write_speed(cfg: PlanConfig, facts: ModelFacts, p: Placement) -> WriteSpeed:
    cores = max(1, cfg.node_cpu_cores * p.gpus_per_replica // cfg.gpus_per_node)
    if cfg.store_write_gib_s is not None:
        return WriteSpeed(cfg.store_write_gib_s, cfg.codec, None, cores, 1.0)
    per_core, scaling = write_rate(cfg.codec, facts.dtype)
    per_core = cfg.write_gib_s_per_core or per_core
    scaling = cfg.write_scaling or scaling
    return WriteSpeed(per_core * cores * scaling, cfg.codec, per_core, cores, scaling)


@dataclass(frozen=True)
class CaptureTime:
    write: WriteSpeed
    write_cores_needed: int | None  # writer cores per replica that would keep up with compute
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
    eigen_core_s: float  # one layer's eigh + eigvalsh, on one core
    shares_flops: float
    lens_tokens: int
    lens_flops: float
    gram_s: float
    eigen_s: float
    shares_s: float
    lens_s: float
    total_s: float  # wall time: the tasks scheduled on the cores as the analysis pool does (``makespan``)
    lens_all_s: float  # the lens pass over every token instead
    task_memory_gib: float  # one (checkpoint, layer) task's float64 scatters
    packed_s: float  # the core time spread perfectly over the cores (the bound ``total_s`` falls short of)
    layer_waves: int  # rounds of single-threaded layer tasks the cores run: ceil(layers / cores)
    total_all_s: float  # wall time with the lens over every token
    calibration_sims: int  # simulated layers per layer (analyze/contraction/calibration.py): 0 where tokens > 8·d or turned off
    calibrated: bool = False  # tokens ≤ 8·d: the exact jackknife runs (and the simulations, if any)


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
    w = write_speed(cfg, facts, p)
    rates = {
        "GPU compute": cfg.gpu_tflops * 1e12 * cfg.mfu / flops,
        "store writes": w.gib_s * GIB / s.bytes_per_token,
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
    # cores a replica's writer would need to keep up with its GPUs (None where the rate was given as a whole)
    need = (math.ceil(rates["GPU compute"] * s.bytes_per_token / GIB / (w.per_core * w.scaling))
            if w.per_core else None)
    return CaptureTime(
        write=w, write_cores_needed=need,
        flops_per_token=flops, compute_tokens_s=rates["GPU compute"], write_tokens_s=rates["store writes"],
        offload_tokens_s=offload, tokens_s=rate, bound=bound, active_replicas=active, load_s=load_s, run_s=run_s,
        total_s=total, gpu_hours=total * p.replicas * p.gpus_per_replica / 3600,
    )


def analysis_cost(cfg: PlanConfig, facts: ModelFacts, s: StoreSize) -> AnalysisCost:
    """CPU cost of one checkpoint's trace (docs/method.md §2–3), per stored layer, at the per-core rates of
    ``PlanConfig`` (measured by benchmarks/bench_rates.py):

    - Gram: N·d² float64 (SYRK: the upper triangle only, analyze/contraction/gram.py), or 2·N²·d below d tokens, where the
      rows' N×N Gram is used instead;
    - eigen: one eigh with vectors (centered) and one eigvalsh (raw) at r = min(N, d), ``cpu_eigen_s_1024·(r/1024)³``
      core-seconds, whatever the bootstrap and null sizes (first-order replicates, analyze/contraction/influence.py);
    - shares: blocks × 2·d²·r float64, each block's share of every value (a's window ends at ≤ r/2; the effective
      rank's and RankMe's intervals read them all, analyze/contraction/ranks.py);
    - calibration: where N ≤ 8·d, the exact jackknife (one eigvalsh per block) and the layer's share
      (``calibration.per_layer``) of ``calibration_sims`` simulated layers of the same N and d, each its own Gram
      and 1 + blocks eigvalsh (analyze/contraction/calibration.py), an eigvalsh costing EIGVALSH_SHARE of the eigen rate;
      none above 8·d;
    - lens: 2·T·d·V float32 for the T transport tokens (log-softmax and distances are O(T·V)).
    """
    n, d, layers = cfg.tokens, facts.hidden, s.layers
    r = min(n, d)
    gram = layers * (float(n) * d * d if n >= d else 2.0 * n * n * d)
    eigen_core_s = cfg.cpu_eigen_s_1024 * (r / 1024) ** 3
    shares = layers * cfg.blocks * 2.0 * d * d * r if n >= d else layers * 2.0 * n * n * r
    t = n if cfg.lens_tokens == 0 else min(cfg.lens_tokens, n)
    lens = layers * 2.0 * t * d * facts.vocab
    calibrated = calibration.needed(n, d)
    sims = calibration.per_layer(cfg.calibration_sims, layers) if calibrated else 0
    solves = (cfg.blocks + sims * (1 + cfg.blocks)) * EIGVALSH_SHARE if calibrated else 0.0  # in eigen units
    gram = gram * (1 + sims)
    cores = cfg.cpu_cores
    gram_s = gram / (cores * cfg.cpu_gflops_f64 * 1e9)
    eigen_s = layers * eigen_core_s * (1 + solves) / cores
    shares_s = shares / (cores * cfg.cpu_gflops_shares * 1e9)
    lens_s = lens / (cores * cfg.cpu_gflops_f32 * 1e9)
    lens_all_s = lens_s * n / t
    # Each layer is one single-threaded task (Gram, eigen, shares); the lens is one task per core (token ranges),
    # queued after the layer tasks, so its tasks fill the cores the last wave of layers leaves idle.
    per_layer = (gram_s + eigen_s + shares_s) * cores / layers
    total = makespan([per_layer] * layers + [lens_s] * cores, cores)
    total_all = makespan([per_layer] * layers + [lens_all_s] * cores, cores)
    # blocks per-block scatters + the merged total + its eigenvectors, d×d float64 each (analyze/contraction/gram.py)
    task_mem = (cfg.blocks + 2) * r * r * 8 / GIB
    return AnalysisCost(gram, eigen_core_s, shares, t, lens, gram_s, eigen_s, shares_s, lens_s, total, lens_all_s,
                        round(task_mem, 3), gram_s + eigen_s + shares_s + lens_s, -(-layers // cores), total_all, sims,
                        calibrated)


@dataclass(frozen=True)
class CompareCost:
    """CPU cost of the comparison's lens work, every checkpoint against the first (analyze/compare/pipeline.py)."""

    pairs: int
    cross_tokens: int  # tokens of the cross-readout subsample
    cross_flops: float  # 3 readouts per (token, layer, pair): lens_A(h_A), lens_A(h_B), lens_B(h_B)
    position_tokens: int
    position_flops: float  # 2 final-layer readouts per (token, pair)
    total_s: float  # wall time: one task per (pair, layer) and one per pair, scheduled on the analysis cores
    packed_s: float


def compare_cost(cfg: PlanConfig, facts: ModelFacts, s: StoreSize) -> CompareCost:
    """The comparison's lens FLOPs and wall time (docs/method.md §4): each readout is 2·d·V float32 per token, as
    the analysis' lens pass (priced at the same per-core rate, ``cpu_gflops_f32``); the paired statistics
    themselves read the traces only (seconds)."""
    pairs = cfg.checkpoints - 1
    readout = 2.0 * facts.hidden * facts.vocab  # FLOPs of one token's logit-lens readout
    tx, tp = min(cfg.cross_readout_tokens, cfg.tokens), min(cfg.position_tokens, cfg.tokens)
    per_cross, per_pos = 3 * readout * tx, 2 * readout * tp  # one task each: a (pair, layer), a pair
    rate = cfg.cpu_gflops_f32 * 1e9
    tasks = [per_cross / rate] * (pairs * s.layers if tx else 0) + [per_pos / rate] * (pairs if tp else 0)
    cross, pos = pairs * s.layers * per_cross, pairs * per_pos
    return CompareCost(pairs, tx, cross, tp, pos, makespan(tasks, cfg.cpu_cores), (cross + pos) / (rate * cfg.cpu_cores))


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of tasks taken in order by the first free of ``workers`` (how the analysis pool and Ray's
    task queue run them): greedy list scheduling, exact for that order."""
    import heapq

    free = [0.0] * max(1, min(workers, len(durations)))
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free) if durations else 0.0
