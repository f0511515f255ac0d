"""The plan as text: every number `spinal plan` prints, and every assumption with its value."""

from __future__ import annotations

import dataclasses

from spinal.analyze.contraction.calibration import CALIBRATE_BELOW
from spinal.cluster.planner.config import GIB, RATES, WRITE_RATES, PlanConfig
from spinal.cluster.planner.cost import AnalysisCost, CaptureTime, CompareCost, StoreSize
from spinal.cluster.planner.placement import Placement, max_memory_flag
from spinal.cluster.planner.presets import ModelFacts


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


def render(c: PlanConfig, m: ModelFacts, p: Placement, s: StoreSize, t: CaptureTime, a: AnalysisCost,
           k: CompareCost) -> str:
    """Human-readable plan of a config ``c`` and model ``m``: placement, store, capture, analysis and comparison
    lines, then every assumption with its value."""
    lines = [f"spinal plan: {m.name} ({m.source}) in {m.dtype}", ""]
    for part in (_placement(c, m, p), _store(c, m, s), _capture(t), _analysis(c, s, a), _comparison(c, k)):
        lines += part
    return "\n".join(lines + ["", *_assumptions(c, m)])


def _placement(c: PlanConfig, m: ModelFacts, p: Placement) -> list[str]:
    """The model, the GPUs, the replicas and each replica's device map."""
    idle = f"{p.idle_gpus_per_node} GPU(s) idle per node" if p.idle_gpus_per_node else "no GPU idle"
    lines = [
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
    return lines


def _store(c: PlanConfig, m: ModelFacts, s: StoreSize) -> list[str]:
    """Bytes per token and per checkpoint, chunks, shards and work units."""
    itemsize = (s.hidden_bytes_per_token // (s.layers * m.hidden))
    return [
        f"store      {s.layers} layers × {m.hidden:,} × {itemsize} B + {s.table_bytes_per_token} B token tables "
        f"= {s.bytes_per_token:,} B per token ({s.bytes_per_token / 2**20:.2f} MiB)",
        f"           {s.tokens:,} tokens → {s.total_bytes / GIB:,.1f} GiB per checkpoint raw (zstd shrinks it "
        f"somewhat) + lens {s.lens_bytes / GIB:.2f} GiB",
        f"           chunks of {s.t_chunk} tokens, shards of {s.t_shard}; ≈ {s.units:,} work unit(s) of "
        f"{c.unit_tokens:,} tokens",
    ]


def _capture(t: CaptureTime) -> list[str]:
    """Throughput per replica, its bound, and the time of one checkpoint's capture."""
    return [
        f"capture    {t.flops_per_token / 1e9:,.1f} GFLOP per token; per replica {t.compute_tokens_s:,.0f} tokens/s "
        f"from compute, {t.write_tokens_s:,.0f} from store writes"
        + (f", {t.offload_tokens_s:,.0f} from offload streaming" if t.offload_tokens_s is not None else "")
        + f": bound by {t.bound}",
        "           " + _write_line(t),
        f"           {t.active_replicas} replica(s) busy: {_dur(t.load_s)} loading weights + {_dur(t.run_s)} "
        f"capturing = {_dur(t.total_s)}, {t.gpu_hours:,.2f} GPU-hours per checkpoint",
    ]


def _analysis(c: PlanConfig, s: StoreSize, a: AnalysisCost) -> list[str]:
    """One checkpoint's trace on the analysis cores: Gram, eigensolves, block shares, calibration, lens."""
    return [
        f"analysis   per checkpoint on {c.cpu_cores} cores: Gram {_si(a.gram_flops)}FLOP ({_dur(a.gram_s)}), "
        f"eigh + eigvalsh {_dur(a.eigen_core_s)} per layer-core ({_dur(a.eigen_s)}), block shares "
        f"{_si(a.shares_flops)}FLOP ({_dur(a.shares_s)}),"
        + (f" with the CI's exact jackknife ({c.blocks} eigvalsh per layer, as tokens ≤ {CALIBRATE_BELOW}·d) and "
           f"{a.calibration_sims} simulated layers per layer (Gram × {1 + a.calibration_sims}, {1 + c.blocks} "
           "eigvalsh each; analyze --calibration-sims 0, here --set calibration_sims=0, keeps the jackknife alone),"
           if a.calibrated else ""),
        f"           lens over {a.lens_tokens:,} tokens {_si(a.lens_flops)}FLOP ({_dur(a.lens_s)}) → "
        f"{_dur(a.total_s)} wall ({s.layers} single-threaded layer tasks in {a.layer_waves} wave"
        f"{'s' * (a.layer_waves != 1)} on {c.cpu_cores} cores, lens tasks filling idle cores; {_dur(a.packed_s)} if "
        "perfectly packed);",
        f"           lens over all {s.tokens:,} tokens (--lens-tokens 0, or as far as the pilot may grow to reach "
        f"--lens-precision): {_dur(a.lens_all_s)} → {_dur(a.total_all_s)}; "
        f"one layer task holds {a.task_memory_gib:.1f} GiB of float64 scatters",
        f"           rates per core measured by {RATES['command']} on {RATES['machine']['cpu']} "
        f"({RATES['measured']}), one BLAS thread: set cpu_* below to price other CPUs",
    ]


def _comparison(c: PlanConfig, k: CompareCost) -> list[str]:
    """The comparison's lens work, all pairs together, on the same cores and at the same lens rate."""
    if k.pairs == 0:
        return ["compare    one checkpoint: nothing to compare (--set checkpoints=N prices N − 1 pairs)"]
    return [
        f"compare    {k.pairs} pair(s) against the first checkpoint (--set checkpoints=N) on {c.cpu_cores} cores: "
        f"cross-readout 3 readouts × {k.cross_tokens:,} tokens × every layer {_si(k.cross_flops)}FLOP, positions "
        f"2 final-layer readouts × {k.position_tokens:,} tokens {_si(k.position_flops)}FLOP → {_dur(k.total_s)} "
        f"wall ({_dur(k.packed_s)} if perfectly packed); once per run, after every trace",
    ]


def _assumptions(c: PlanConfig, m: ModelFacts) -> list[str]:
    """Every assumption field with its value and help (set each with --set KEY=VALUE)."""
    lines = ["assumptions (PlanConfig fields; change any of them):"]
    for f in dataclasses.fields(c):
        if f.metadata.get("assumption"):
            v = getattr(c, f.name)
            shown = "unset" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)
            lines.append(f"  {f.name:<20} = {shown:<8}  {f.metadata['help']}")
    if m.dtype == "float32" and c.gpu_tflops == 989.0:
        lines.append("  note: gpu_tflops 989 is a bf16 peak; float32 matmuls run at ~67 TFLOP/s on an H100")
    return lines


def _write_line(t) -> str:
    """Where the store-write rate came from, and what would lift a write bound."""
    w = t.write
    if w.per_core is None:
        return f"store writes at {w.gib_s:g} GiB/s per replica, as given (store_write_gib_s)"
    line = (f"store writes: codec {w.codec} at {w.per_core:.2f} GiB/s per core × {w.cores} core(s) per replica × "
            f"scaling {w.scaling:.2f} = {w.gib_s:.1f} GiB/s (measured by {WRITE_RATES['command']} on "
            f"{WRITE_RATES['machine']['cpu']}, {WRITE_RATES['measured']})")
    if t.bound == "store writes":
        line += f"; {t.write_cores_needed} writer cores per replica would keep up with compute"
    return line
