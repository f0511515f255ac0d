"""Frozen, documented run configurations shared by the CLI and TOML files; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spinal.errors import InputError

T = TypeVar("T")

POSITION_RULES = ("all-but-first", "all", "last:K", "response")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture: one checkpoint × one prompt set -> one store."""

    model: str = _help("local checkpoint folder (safetensors) or hub id")
    prompts: str = _help("prompt file: JSONL {id, prompt[, response]}, plain text (one per line) or Parquet")
    out: str = _help("output store path (local folder or fsspec URL)")
    layers: str = _help("layers to store: 'all' or a list/ranges like '0,4,8-12' (0 = embedding output)", default="all")
    positions: str = _help(
        "token positions: 'all-but-first' (skip position 0, the attention sink), 'all', 'last:K', 'response'",
        default="all-but-first",
    )
    batch_size: int = _help("sequences per forward pass", default=8)
    max_length: int = _help("tokens per sequence; longer inputs are truncated (and reported)", default=512)
    dtype: str = _help("compute dtype: auto (the checkpoint's), float32, bfloat16, float16", default="auto")
    device_map: str | None = _help("accelerate device_map: 'auto', 'cpu', 'cuda:0', … (default: cpu or one GPU)", default=None)
    max_memory: str | None = _help("accelerate max_memory, e.g. '0=70GiB,1=70GiB,cpu=200GiB'", default=None)
    chat_template: bool = _help("wrap prompts with the tokenizer's chat template", default=False)
    unit_tokens: int = _help("stored tokens per work unit (a unit owns whole shards)", default=8192)
    resume: bool = _help("finish an interrupted store: redo exactly the units not marked done", default=False)
    overwrite: bool = _help("replace an existing store at --out", default=False)
    trust_remote_code: bool = _help("allow the checkpoint's own Python code (off: refused)", default=False)
    allow_pickle: bool = _help("allow pickle (.bin/.pt) weights (off: safetensors only)", default=False)
    allow_offload: bool = _help("allow a device map that spills to CPU or disk on a GPU replica", default=False)
    self_check: bool = _help("compare captured states and lens logits with the model's own on a probe batch", default=True)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size}; must be ≥ 1")
        if self.max_length < 2:
            raise InputError(f"max_length={self.max_length}; must be ≥ 2")
        if self.unit_tokens < 1:
            raise InputError(f"unit_tokens={self.unit_tokens}; must be ≥ 1")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")
        parse_positions(self.positions)
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite contradict each other: choose one")
        parse_layers(self.layers, None)


def parse_positions(rule: str) -> tuple[str, int]:
    """'all-but-first' | 'all' | 'response' | 'last:K' -> (kind, K)."""
    if rule in ("all-but-first", "all", "response"):
        return rule, 0
    m = re.fullmatch(r"last:(\d+)", rule)
    if m and int(m.group(1)) >= 1:
        return "last", int(m.group(1))
    raise InputError(f"positions={rule!r}; choose one of {', '.join(POSITION_RULES)} (K ≥ 1)")


def parse_layers(spec: str, n_layers: int | None) -> list[int] | None:
    """'all' or '0,4,8-12' -> sorted layer indices (checked against n_layers = blocks + 1 when known)."""
    if spec.strip() == "all":
        return list(range(n_layers)) if n_layers is not None else None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"layers={spec!r}: cannot read {part!r}; use 'all' or e.g. '0,4,8-12'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"layers={spec!r}: range {part!r} runs backwards")
        out.update(range(lo, hi + 1))
    if n_layers is not None:
        bad = sorted(i for i in out if i >= n_layers)
        if bad:
            raise InputError(
                f"layers {bad} do not exist: this model has layers 0–{n_layers - 1} "
                f"(0 = embedding output, {n_layers - 1} = last block)"
            )
    return sorted(out)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a config dataclass from a TOML table, refusing unknown keys and wrong types by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    for k, v in data.items():
        typ = str(fields[k].type)
        ok = (
            ("bool" in typ and isinstance(v, bool))
            or ("int" in typ and isinstance(v, int) and not isinstance(v, bool))
            or ("float" in typ and isinstance(v, (int, float)) and not isinstance(v, bool))
            or ("str" in typ and isinstance(v, str))
            or ("None" in typ and v is None)
        )
        if not ok:
            raise InputError(f"{where}: key '{k}' = {v!r} has the wrong type; expected {typ}")
    try:
        return cls(**data)
    except TypeError as e:
        raise InputError(f"{where}: {e}") from None


@dataclass(frozen=True)
class AnalyzeConfig:
    """How a store becomes a depth trace (METHOD.md §2–3); every value is recorded in the trace."""

    store: str = _help("store path or URL")
    out: str = _help("trace folder to write (trace.parquet, trace.json, bootstrap/sequence tables)")
    layers: str = _help("layers to analyze: 'all' or a list/ranges of stored layers", default="all")
    window: str = _help("spectral fit window: 'auto' (METHOD.md §2 rule) or 'K_LO:K_HI' (1-based ranks)",
                        default="auto")
    blocks: int = _help("sequence blocks for the bootstrap (sequence s goes to block s mod blocks)", default=16)
    n_boot: int = _help("bootstrap resamples per layer (0: no CI)", default=200)
    null_splits: int = _help("random split-halves per layer for the null spread of Δα", default=8)
    seed: int = _help("seed of the bootstrap draws and the lens token subsample", default=0)
    lens_tokens: int = _help("tokens for the transport pass (seeded subsample; 0 = all)", default=0)
    companion_tokens: int = _help(
        "tokens (a seeded subset of the lens tokens) for the companions JS, KL to final and entropy, whose "
        "cancellation-free float32 forms cost ~4× the Fisher–Rao step; 0 = every lens token", default=4096)
    chunk_mib: int = _help("memory budget of one lens chunk (token × vocab float32), MiB", default=256)
    workers: int = _help("processes for the per-layer and lens tasks (0 = one per core)", default=0)
    overwrite: bool = _help("replace an existing trace folder", default=False)

    def __post_init__(self) -> None:
        for name in ("blocks", "chunk_mib"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 1")
        for name in ("n_boot", "null_splits", "lens_tokens", "companion_tokens", "workers"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 0")
        parse_window(self.window)


def parse_window(spec: str) -> tuple[int, int] | None:
    if spec == "auto":
        return None
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    if not m or not 1 <= int(m.group(1)) < int(m.group(2)):
        raise InputError(f"window={spec!r}; use 'auto' or 'K_LO:K_HI' with 1 ≤ K_LO < K_HI")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run."""

    label: str = _help("name in tables and plots (unique within the run)")
    path: str = _help("local checkpoint folder (safetensors) or hub id")
    revision: str | None = _help("hub revision or a note on the exact version", default=None)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\w.+-]+", self.label):
            raise InputError(f"checkpoint label {self.label!r}: use letters, digits, '.', '_', '+' or '-'")


@dataclass(frozen=True)
class RunConfig:
    """A batch run: several checkpoints on one prompt set -> stores, traces, comparison, report."""

    out: str = _help("output folder: stores/, traces/, compare/, report/")
    prompts: str = _help("prompt file shared by every checkpoint")
    checkpoints: tuple[Checkpoint, ...] = _help("checkpoints, the reference first, then in training order")
    capture: dict = _help("CaptureConfig options (all but model/prompts/out)", default_factory=dict)
    analyze: dict = _help("AnalyzeConfig options (all but store/out)", default_factory=dict)
    compare: dict = _help("compare options: n_boot, seed, weights (bool: per-block parameter change)",
                          default_factory=dict)
    cluster: dict = _help("ClusterConfig options: address, replicas, gpus_per_replica, …", default_factory=dict)
    source: str = _help("the TOML file this run came from", default="")

    def __post_init__(self) -> None:
        if len(self.checkpoints) < 1:
            raise InputError(f"{self.source or 'run config'}: [[checkpoints]] is empty; list at least one")
        labels = [c.label for c in self.checkpoints]
        if len(set(labels)) != len(labels):
            raise InputError(f"{self.source}: checkpoint labels must be unique, got {labels}")
        bad = {"model", "prompts", "out", "resume", "overwrite"} & set(self.capture)
        if bad:
            raise InputError(f"{self.source}: [capture] may not set {sorted(bad)}; the run sets them")
        bad = {"store", "out", "overwrite"} & set(self.analyze)
        if bad:
            raise InputError(f"{self.source}: [analyze] may not set {sorted(bad)}; the run sets them")
        unknown = set(self.compare) - {"n_boot", "seed", "weights", "null_splits", "cross_readout_tokens"}
        if unknown:
            raise InputError(f"{self.source}: unknown key(s) {sorted(unknown)} in [compare]; "
                             "known: n_boot, seed, null_splits, weights, cross_readout_tokens")

    def cluster_config(self, **overrides):
        from spinal.cluster.actors import ClusterConfig

        return from_dict(ClusterConfig, {**self.cluster, **overrides}, where=f"{self.source} [cluster]")

    def capture_config(self, ck: Checkpoint, out: str, **kw) -> CaptureConfig:
        return from_dict(CaptureConfig, {**self.capture, "model": ck.path, "prompts": self.prompts, "out": out, **kw},
                         where=f"{self.source} [capture]")

    def analyze_config(self, store: str, out: str, **kw) -> AnalyzeConfig:
        return from_dict(AnalyzeConfig, {**self.analyze, "store": store, "out": out, **kw},
                         where=f"{self.source} [analyze]")


def load_run_config(path: str) -> RunConfig:
    """Read a run TOML (tables: [run], [[checkpoints]], [capture], [analyze], [compare]); relative paths are
    resolved against the TOML file's folder."""
    import tomllib
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"run config {path} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a TOML run config") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    known = {"run", "checkpoints", "capture", "analyze", "compare", "cluster"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"{path}: unknown table(s) {unknown}; known: {sorted(known)}")
    run = doc.get("run", {})
    extra = sorted(set(run) - {"out", "prompts"})
    if extra:
        raise InputError(f"{path}: unknown key(s) {extra} in [run]; known: ['out', 'prompts']")
    for key in ("out", "prompts"):
        if not isinstance(run.get(key), str):
            raise InputError(f"{path}: [run] needs a string '{key}'")
    base = p.resolve().parent

    def rel(x: str) -> str:
        return x if "://" in x or Path(x).is_absolute() else str((base / x).resolve())

    cks = []
    for i, c in enumerate(doc.get("checkpoints", [])):
        ck = from_dict(Checkpoint, c, where=f"{path} [[checkpoints]] #{i + 1}")
        local = (base / ck.path).exists() or ck.path.startswith((".", "/"))
        cks.append(Checkpoint(ck.label, rel(ck.path) if local else ck.path, ck.revision))
    for table, cls, skip in (("capture", CaptureConfig, {"model", "prompts", "out"}),
                             ("analyze", AnalyzeConfig, {"store", "out"})):
        vals = doc.get(table, {})
        names = {f.name for f in dataclasses.fields(cls)} - skip
        unknown = sorted(set(vals) - names)
        if unknown:
            raise InputError(f"{path}: unknown key(s) {unknown} in [{table}]; known: {sorted(names)}")
    return RunConfig(out=rel(run["out"]), prompts=rel(run["prompts"]), checkpoints=tuple(cks),
                     capture=doc.get("capture", {}), analyze=doc.get("analyze", {}), compare=doc.get("compare", {}),
                     cluster=doc.get("cluster", {}), source=str(path))
