"""What `spinal plan` plans: a model, the GPUs at hand, the capture size and the throughput assumptions (PlanConfig)."""

from __future__ import annotations


import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinal.store.codecs import DEFAULT_CODEC, check_codec
from spinal.config import DTYPES, AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.specs import parse_layers
from spinal.errors import InputError
from spinal.fields import option
from spinal.checkpoint import is_hub_id

GIB = 1 << 30  # the unit of the *_gib fields
# Per-core analysis rates measured by benchmarks/bench_rates.py --write (machine and date inside).
RATES_FILE = Path(__file__).with_name("analysis_rates.json")
RATES = json.loads(RATES_FILE.read_text())
# Per-core store write rates, per codec and storage dtype, measured by benchmarks/bench_write.py --write-rates.
WRITE_RATES_FILE = Path(__file__).with_name("write_rates.json")
WRITE_RATES = json.loads(WRITE_RATES_FILE.read_text())


def write_rate(codec: str, dtype: str) -> tuple[float, float]:
    """(GiB/s per core, scaling) measured for ``codec`` writing ``dtype`` activations (bf16 and fp16: the bf16
    measurement, both stored in two bytes)."""
    measured = WRITE_RATES["codecs"][codec]["float32" if dtype == "float32" else "bfloat16"]
    return float(measured["gib_s_per_core"]), float(measured["scaling"])


def _rate(name: str) -> float:
    return float(RATES[name])


def _default(cls: type, name: str) -> Any:
    """One default in one place: the planner's batch, seq_len and bootstrap sizes are capture's and analyze's."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _opt(text: str, default: Any, assumption: bool = False) -> Any:
    """A plan field; an assumption is set with ``spinal plan --set KEY=VALUE`` (and printed with the plan),
    the others are the verb's own options."""
    return option(text, default, cli=not assumption, extra={"assumption": assumption})


@dataclass(frozen=True)
class PlanConfig:
    """What to plan: a model, the GPUs at hand, the capture size and the throughput assumptions."""

    model: str = option("run config (TOML: its first checkpoint and settings are planned), preset (llama-3-8b, "
                        "llama-3-70b, qwen2.5-72b, mistral-7b, or its hub id) or a local "
                        "config.json / checkpoint folder, or a Hub model id (its config.json from the local Hugging "
                        "Face cache, fetched when not offline); no weights are read")
    revision: str | None = option("Hub revision of a MODEL id: branch, tag or commit (default: main)", None)
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
    codec: str = _opt("store codec (capture --codec); its measured write rate prices the capture", DEFAULT_CODEC,
                      True)
    node_cpu_cores: int = _opt("CPU cores of each GPU node; a replica's store writer has its share "
                               "(node_cpu_cores × gpus_per_replica / gpus_per_node)", 96, True)
    write_gib_s_per_core: float | None = _opt("GiB/s of raw activations one core compresses, checksums and writes "
                                              "(unset: measured for the codec and dtype, cluster/planner/write_rates.json)",
                                              None, True)
    write_scaling: float | None = _opt("write throughput at n cores / (n × one core's) (unset: measured, "
                                       "cluster/planner/write_rates.json)", None, True)
    store_write_gib_s: float | None = _opt("GiB/s one replica writes to the store (unset: per core × writer cores × "
                                           "scaling; set it for a store whose file system is the bound)", None, True)
    weight_read_gib_s: float = _opt("GiB/s one replica reads its safetensors at load (and disk-offloaded weights)",
                                    2.0, True)
    host_link_gib_s: float = _opt("GiB/s host→GPU for CPU-offloaded weights, streamed every forward pass", 20.0,
                                  True)
    cpu_cores: int = _opt("CPU cores for the analysis (all nodes together)", 64, True)
    cpu_gflops_f64: float = _opt("GFLOP/s per core, float64 SYRK (the Gram pass, N·d² per layer)",
                                 _rate("gram_gflops_per_core"), True)
    cpu_eigen_s_1024: float = _opt("seconds of one layer's float64 eigh (with vectors) + eigvalsh at d = 1024 on one "
                                   "core, scaled as (d/1024)³", _rate("eigen_c_d3") * 1024**3, True)
    cpu_gflops_shares: float = _opt("GFLOP/s per core, float64 (d×d)·(d×d/2) products: each block's share of the "
                                    "spectrum, blocks·d³ per layer", _rate("shares_gflops_per_core"), True)
    cpu_gflops_f32: float = _opt("GFLOP/s per core, float32 logit lens (2·T·d·V per layer)",
                                 _rate("lens_gflops_per_core"), True)
    lens_tokens: int = _opt("tokens of the transport (lens) pass; 0 = all", _default(AnalyzeConfig, "lens_tokens"),
                            True)
    blocks: int = _opt("bootstrap blocks (one d×d float64 scatter each in memory)", _default(AnalyzeConfig, "blocks"),
                       True)
    calibration_sims: int = _opt("simulated layers per checkpoint (≥ 2 per layer) that calibrate the CI's jackknife "
                                 "where tokens ≤ 8·d, each a Gram + 1 + blocks eigvalsh; 0 = the jackknife alone",
                                 _default(AnalyzeConfig, "calibration_sims"), True)
    checkpoints: int = _opt("checkpoints of the run (the comparison reads checkpoints − 1 pairs against the first)",
                            2, True)
    cross_readout_tokens: int = _opt("tokens of the comparison's cross-readout lens (3 readouts per token, layer and "
                                     "pair); 0 = none", _default(CompareConfig, "cross_readout_tokens"), True)
    position_tokens: int = _opt("tokens of the comparison's position profile (2 final-layer readouts per token and "
                                "pair); 0 = none", _default(CompareConfig, "position_tokens"), True)

    def __post_init__(self) -> None:
        for name in ("gpus_per_node", "nodes", "tokens", "batch_size", "seq_len", "unit_tokens", "cpu_cores",
                     "blocks", "checkpoints"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 1")
        for name in ("lens_tokens", "calibration_sims", "headroom_gib", "offload_cpu_gib", "cross_readout_tokens",
                     "position_tokens"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 0")
        for name in ("gpu_memory_gib", "gpu_tflops", "store_write_gib_s", "weight_read_gib_s", "host_link_gib_s",
                     "cpu_gflops_f64", "cpu_eigen_s_1024", "cpu_gflops_shares", "cpu_gflops_f32",
                     "write_gib_s_per_core"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise InputError(f"{name}={getattr(self, name)}; must be > 0")
        if self.write_scaling is not None and not 0 < self.write_scaling <= 1:
            raise InputError(f"write_scaling={self.write_scaling}; must be in (0, 1]")
        if self.node_cpu_cores < 1:
            raise InputError(f"node_cpu_cores={self.node_cpu_cores}; must be ≥ 1")
        check_codec(self.codec)
        if not 0 < self.mfu <= 1:
            raise InputError(f"mfu={self.mfu}; must be in (0, 1]")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.gpus_per_replica is not None and not 1 <= self.gpus_per_replica <= self.gpus_per_node:
            raise InputError(f"gpus_per_replica={self.gpus_per_replica}; must be 1–{self.gpus_per_node} "
                             f"(gpus_per_node): a replica never spans nodes")
        parse_layers(self.layers, None)


def from_run(path: str, notes: list[str] | None = None) -> dict[str, Any]:
    """The plan fields a run TOML fixes: its first checkpoint, [capture] dtype, layers, batch_size, max_length and
    unit_tokens, [analyze] lens_tokens, blocks and calibration_sims, [compare] cross_readout_tokens and
    position_tokens, the number of checkpoints, and [cluster] gpus_per_replica when set. A
    checkpoint path that is not here but names a preset (the cluster config's /shared/models/Meta-Llama-3-70B) plans
    that preset, with a line in ``notes``."""
    from spinal.config import load_run_config

    run = load_run_config(path)
    c, a = run.capture, run.analyze
    values = {"model": run.checkpoints[0].path, "revision": run.checkpoints[0].hub_revision, "dtype": c.dtype, "layers": c.layers, "batch_size": c.batch_size,
              "seq_len": c.max_length, "unit_tokens": c.unit_tokens, "lens_tokens": a.lens_tokens, "blocks": a.blocks,
              "calibration_sims": a.calibration_sims, "checkpoints": len(run.checkpoints),
              "cross_readout_tokens": run.compare.cross_readout_tokens, "position_tokens": run.compare.position_tokens}
    if run.cluster.gpus_per_replica > 0:
        values["gpus_per_replica"] = run.cluster.gpus_per_replica
    adapters = [ck.label for ck in run.checkpoints if ck.adapter]
    if adapters and notes is not None:  # merged into the base in memory before capture: the base's shape and cost
        notes.append(f"{path}: {len(adapters)} checkpoint(s) ({', '.join(adapters)}) add a LoRA adapter to their base; "
                     "it is merged in memory before capture, so each costs what its base costs, planned here")
    if "://" not in values["model"] and not Path(values["model"]).exists() and not is_hub_id(values["model"]):
        from spinal.cluster.planner.presets import find_preset

        preset = find_preset(Path(values["model"]).name)  # /shared/models/Meta-Llama-3-70B names its preset
        if preset is None:
            raise InputError(f"{path}: the first checkpoint {values['model']} is not on this machine; plan where it "
                             "is, or plan its preset (e.g. spinal plan llama-3-70b) with --set for the run's settings")
        if notes is not None:
            notes.append(f"{path}: the first checkpoint {values['model']} is not on this machine; planned as the "
                         f"preset {preset} its name matches (plan on the head node to read the checkpoint's own "
                         "config)")
        values["model"] = preset
    return values
