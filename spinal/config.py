"""Frozen, documented configurations of every stage (capture, analyze, compare, cluster) and of a run."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, replace
from typing import ClassVar

from spinal.capture_config import DTYPES, CaptureConfig
from spinal.errors import InputError, need
from spinal.fields import apply_sets, from_dict, option
from spinal.checkpoint import is_hub_id
from spinal.specs import parse_layers, parse_window

__all__ = ["DTYPES", "CaptureConfig", "AnalyzeConfig", "CompareConfig", "ClusterConfig", "RunConfig",
           "load_run_config"]  # CaptureConfig lives in its own module (spinal/capture_config.py), one import here


@dataclass(frozen=True)
class AnalyzeConfig:
    """How a store becomes a depth trace (docs/method.md §2–3); every value is recorded in the trace."""

    RUN_SETS: ClassVar[frozenset] = frozenset({"store", "out", "overwrite"})

    store: str = option("store path or URL")
    out: str = option("trace folder to write (trace.parquet, trace.json, bootstrap/sequence tables)", short="-o")
    layers: str = option("layers to analyze: 'all' or a list/ranges of stored layers", "all")
    window: str = option("spectral fit window: 'auto' (docs/method.md §2 rule) or 'K_LO:K_HI' (1-based ranks)", "auto")
    blocks: int = option("sequence blocks for the bootstrap (sequence s goes to block s mod blocks)", 16)
    n_boot: int = option("bootstrap resamples per layer (0: no CI); first-order spectra, so nearly free", 1000)
    null_splits: int = option("random split-halves per layer for the null spread of Δα", 8)
    calibration_sims: int = option(
        "simulated layers per trace, spread over its layers (≥ 2 each), that calibrate the exact jackknife SE of a "
        "where a layer holds ≤ 8·d tokens (there first-order replicates understate sd(a): docs/intervals.md); "
        "each costs a Gram pass and 1 + blocks eigvalsh; 0 = the jackknife alone (conservative)", 96)
    seed: int = option("seed of the bootstrap draws and the lens token subsample", 0)
    lens_tokens: int = option("tokens for the transport pass (seeded subsample; 0 = all); the default keeps each "
                              "step's mean L within 1 % of the L curve's spread on the reference family "
                              "(docs/benchmarks.md); trace.json L_precision says what a run got", 12288)
    lens_precision: float = option(
        "grow the lens subsample beyond --lens-tokens (the pilot) until every step's mean L is uncertain by at most "
        "this share of the L curve's spread (standard error over the SD of the step means; ≤ 3 rounds, each ≤ 4× "
        "the last, from the remaining tokens in a seeded order); 0 = exactly --lens-tokens", 0.01)
    companion_tokens: int = option(
        "tokens (a seeded subset of the lens tokens) for the companions JS, KL to final and entropy, whose "
        "cancellation-free float32 forms cost ~4× the Fisher–Rao step; 0 = every lens token", 4096)
    chunk_mib: int = option("memory budget of one lens chunk (token × vocab float32), MiB; a chunk holds at most "
                            "512 tokens, which keeps small vocabularies near the caches", 256)
    workers: int = option("processes for the per-layer and lens tasks (0 = one per core)", 0)
    ranks: bool = option("effective rank and RankMe intervals: every rank's block shares, not only a's window's "
                         "(off: their values only, no intervals or paired Δ; docs/method.md §2)", True)
    overwrite: bool = option("replace an existing trace folder", False)

    def __post_init__(self) -> None:
        for name in ("blocks", "chunk_mib"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 1")
        for name in ("n_boot", "null_splits", "calibration_sims", "lens_tokens", "companion_tokens", "workers"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 0")
        if not 0 <= self.lens_precision < 1:
            raise InputError(f"lens_precision={self.lens_precision}; give a share in [0, 1), e.g. 0.01 for 1 % "
                             "of the L curve's spread, or 0 for exactly --lens-tokens")
        parse_window(self.window)


@dataclass(frozen=True)
class CompareConfig:
    """How traces become a comparison (docs/method.md §4): paired CIs, the null spread, optional companions."""

    n_boot: int = option("bootstrap resamples for ΔL (Δa pairs the traces' own replicates)", 1000)
    seed: int = option("seed of the ΔL bootstrap and the split-halves", 0)
    null_splits: int = option("random split-halves of the reference's sequences for the null spread of ΔL", 32)
    cross_readout_tokens: int = option("tokens (seeded subsample) for the cross-readout lens (0: none)", 20000,
                                       short="--cross-tokens")  # the CLI flag is the TOML name; the old one works
    position_tokens: int = option("tokens (seeded subsample) for where in the reply the checkpoints differ: "
                                  "final-layer KL and shifted tokens by position (0: none)", 20000)
    jump_factor: float = option("training series: flag a checkpoint whose step from the one before is more than "
                                "this many times the run's typical healthy step (analyze/compare/stability.py)", 4.0)
    weights: bool = option("per-block parameter change ‖θ − θ_ref‖², streamed from the safetensors", True, cli=False)
    pairing: str = option(
        "how each trace is paired with the reference: 'token' (the identical token stream), 'prompt' (the same "
        "prompts in the same order, e.g. one checkpoint's chosen against its rejected replies: Δa and ΔL only, "
        "per-position numbers skipped), or 'auto' (token where the streams are identical, prompt for the two reply "
        "sides of one `--reply both` capture)", "auto")
    allow_mixed: bool = option("compare traces whose capture storage dtype, positions rule or lens options differ "
                               "(refused otherwise); the comparison records the mix and the report says so", False)
    cka: bool = option("linear CKA per layer between each checkpoint and the reference, read from both stores "
                       "(a jackknife interval over the sequence blocks)", True)
    cka_tokens: int = option("tokens (seeded subsample, the same for every layer and pair; 0: every token) for "
                             "linear CKA; a sequence's tokens stay in its block, so the jackknife deletes sequence "
                             "blocks", 20000)

    def __post_init__(self) -> None:
        if self.pairing not in ("auto", "token", "prompt"):
            raise InputError(f"pairing={self.pairing!r}; choose auto, token or prompt")
        if self.n_boot < 1:
            raise InputError(f"n_boot={self.n_boot}: the ΔL bootstrap needs ≥ 1 resample (default 1000)")
        if not self.jump_factor > 1:
            raise InputError(f"jump_factor={self.jump_factor}: a jump must be larger than the typical step (> 1; "
                             "default 4)")
        for name in ("null_splits", "cross_readout_tokens", "position_tokens", "cka_tokens"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)}; must be ≥ 0")


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how wide a run executes."""

    address: str | None = option("Ray address: None = in-process (1 replica) or a local Ray instance; "
                                 "'auto' joins the running cluster", None)
    replicas: int = option("model replicas (capture actors)", 1)
    gpus_per_replica: int = option("GPUs per replica actor (-1: 1 if the cluster has GPUs, else 0)", -1)
    cpus_per_replica: int = option("CPUs reserved per replica actor", 1)
    max_unit_retries: int = option("retries of a unit that raised an error before the run stops", 2)
    analysis_workers: int = option("concurrent analysis tasks (0: as many as the cluster has CPUs)", 0)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InputError(f"[cluster] replicas={self.replicas}; must be ≥ 1")
        if self.max_unit_retries < 0:
            raise InputError(f"[cluster] max_unit_retries={self.max_unit_retries}; must be ≥ 0")

    @property
    def uses_ray(self) -> bool:
        return self.address is not None or self.replicas > 1


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run."""

    label: str = option("name in tables and plots (unique within the run)")
    path: str = option("local checkpoint folder (safetensors), a .gguf file, or Hub model id (org/name)")
    revision: str | None = option("of a Hub id: the revision captured (branch, tag or commit; the store records "
                                  "the commit); of a local path: a note on its version, recorded in run.json", None)
    adapter: str | None = option("a PEFT/LoRA adapter folder merged into ``path`` (its base) for this checkpoint",
                                 None)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\w.+-]+", self.label):
            raise InputError(f"checkpoint label {self.label!r}: use letters, digits, '.', '_', '+' or '-'")

    @property
    def hub_revision(self) -> str | None:
        """The revision resolved for ``path``: a Hub id's; a local path's revision is a note, never resolved."""
        return self.revision if is_hub_id(self.path) else None


@dataclass(frozen=True)
class RunConfig:
    """A batch run: several checkpoints on one prompt set -> stores, traces, comparison, report.

    ``capture`` and ``analyze`` are the configs of the first checkpoint; ``capture_config`` and
    ``analyze_config`` give any checkpoint's (only the paths differ)."""

    out: str = option("output folder: stores/, traces/, compare/, report/")
    prompts: str = option("prompt set shared by every checkpoint: a file, a dataset folder or glob, or a Hub "
                          "dataset id ([capture] split, reply, prompt_column, … choose how it is read)")
    checkpoints: tuple[Checkpoint, ...] = option("checkpoints, the reference first, then in training order")
    capture: CaptureConfig = option("[capture]: CaptureConfig options (all but model/prompts/out/resume/overwrite)")
    analyze: AnalyzeConfig = option("[analyze]: AnalyzeConfig options (all but store/out/overwrite)")
    compare: CompareConfig = option("[compare]: CompareConfig options", default_factory=CompareConfig)
    cluster: ClusterConfig = option("[cluster]: ClusterConfig options", default_factory=ClusterConfig)
    source: str = option("the TOML file this run came from", "")

    def __post_init__(self) -> None:
        labels = [c.label for c in self.checkpoints]
        if len(set(labels)) != len(labels):
            raise InputError(f"{self.source}: checkpoint labels must be unique, got {labels}")

    def sides(self) -> list["RunConfig"]:
        """The run itself, or with [capture] reply = 'both' one run per reply side, in OUT/chosen and OUT/rejected
        (cluster/run.py then compares each checkpoint's two sides, paired by prompt, in OUT/sides/LABEL)."""
        if self.capture.reply != "both":
            return [self]
        return [replace(self, capture=replace(self.capture, reply=side), out=f"{self.out}/{side}")
                for side in ("chosen", "rejected")]

    def store_path(self, ck: Checkpoint) -> str:
        return f"{self.out}/stores/{ck.label}.zarr"

    def trace_path(self, ck: Checkpoint) -> str:
        return f"{self.out}/traces/{ck.label}"

    def capture_config(self, ck: Checkpoint, out: str, **kw) -> CaptureConfig:
        return replace(self.capture, model=ck.path, revision=ck.hub_revision, adapter=ck.adapter, prompts=self.prompts,
                       out=out, **kw)

    def analyze_config(self, store: str, out: str, **kw) -> AnalyzeConfig:
        return replace(self.analyze, store=store, out=out, **kw)

    def cluster_config(self, **overrides) -> ClusterConfig:
        return replace(self.cluster, **overrides)

    def record(self) -> dict:
        """What identifies the run (run.json): every resolved option, no paths the run sets itself."""
        d = dataclasses.asdict(self)
        d.pop("source")
        for table, cls in (("capture", CaptureConfig), ("analyze", AnalyzeConfig)):
            for k in cls.RUN_SETS:
                d[table].pop(k, None)
        return d


STAGE_TABLES = ("capture", "analyze", "compare", "cluster")


def load_run_config(path: str, *, out: str | None = None, sets: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run TOML (tables: [run], [[checkpoints]], [capture], [analyze], [compare], [cluster]) into typed
    configs, checked once; relative paths are resolved against the TOML file's folder.

    ``out`` replaces [run] out (relative to the working directory, as a command-line path is); ``sets`` are
    ``TABLE.KEY=VALUE`` overrides of the stage tables, applied before the checks and recorded like the file's."""
    import tomllib
    from pathlib import Path

    p = Path(path)
    need(path, "file", "run config")
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
    classes = dict(zip(STAGE_TABLES, (CaptureConfig, AnalyzeConfig, CompareConfig, ClusterConfig)))
    apply_sets(doc, sets, classes)
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
        ck = replace(ck, path=rel(ck.path)) if local else ck
        cks.append(replace(ck, adapter=rel(ck.adapter)) if ck.adapter else ck)
    if not cks:
        raise InputError(f"{path}: [[checkpoints]] is empty; list at least one")
    out, prompts = (str(Path(out).resolve()) if out else rel(run["out"])), rel(run["prompts"])
    first = {"capture": {"model": cks[0].path, "prompts": prompts, "out": f"{out}/stores/{cks[0].label}.zarr"},
             "analyze": {"store": f"{out}/stores/{cks[0].label}.zarr", "out": f"{out}/traces/{cks[0].label}"}}
    stages = {}
    for table, cls in classes.items():
        vals = doc.get(table, {})
        names = {f.name for f in dataclasses.fields(cls)} - getattr(cls, "RUN_SETS", frozenset())
        unknown = sorted(set(vals) - names)
        if unknown:
            sets = sorted(set(unknown) & getattr(cls, "RUN_SETS", frozenset()))
            if sets:
                raise InputError(f"{path}: [{table}] may not set {sets}; the run sets them")
            raise InputError(f"{path}: unknown key(s) {unknown} in [{table}]; known: {sorted(names)}")
        stages[table] = from_dict(cls, {**vals, **first.get(table, {})}, where=f"{path} [{table}]")
    return RunConfig(out=out, prompts=prompts, checkpoints=tuple(cks), source=str(path), **stages)
