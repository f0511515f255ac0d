"""What the training monitor audits and how (MonitorConfig): one config for the callback, `spinal watch` and a
monitor TOML ([monitor], [capture], [analyze], [compare] tables)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.errors import InputError
from spinal.fields import apply_sets, from_dict, option

# The probe's capture: the model's own dtype would be bf16 under mixed precision; the parameters are float32.
CAPTURE_DEFAULTS = {"model": "", "prompts": "", "out": "", "dtype": "float32"}
# The analysis runs beside training: one process, so it takes one core from the trainer, not all of them.
ANALYZE_DEFAULTS = {"store": "", "out": "", "workers": 1}
# No weight files for a live model; the lens companions on a probe-sized subsample.
COMPARE_DEFAULTS = {"weights": False, "cross_readout_tokens": 4096, "position_tokens": 4096}


@dataclass(frozen=True)
class MonitorConfig:
    """A training run audited while it trains: which probe, how often, against what, and what to do on a flag."""

    SETS: ClassVar[dict] = {"capture": CaptureConfig.RUN_SETS, "analyze": AnalyzeConfig.RUN_SETS,
                            "compare": frozenset()}  # the stage options the monitor sets itself

    out: str = option("audit folder: stores/step-NNNNNN.zarr, traces/, compare/, report/report.html and "
                      "series.jsonl (one line per audited save: its numbers and the destabilization flag)", short="-o")
    prompts: str = option("the probe set captured at every audited step: a file or dataset, read as "
                          "`spinal capture --prompts` reads it ([capture] split, prompt_column, … choose how)",
                          short="-p")
    every: int = option("audit every N training steps (0: at each checkpoint the trainer saves)", 0)
    reference: str | None = option("the reference every step is compared with: a checkpoint folder or Hub id; "
                                   "default: the model before training (callback), the first checkpoint (watch)",
                                   None)
    base: str | None = option("`spinal watch` of PEFT adapter checkpoints: the base model they adapt (default: "
                              "each adapter_config.json's base_model_name_or_path)", None)
    stop_on_flag: bool = option("stop training at the first save flagged destabilized (callback)", False)
    background: bool = option("analyze in a background process, so a save costs the trainer only the capture "
                              "(--no-background: in the trainer's process, which waits for it)", True)
    poll: float = option("`spinal watch`: seconds between looks at the run folder", 30.0)
    capture: CaptureConfig = option("[capture]: how the probe is captured (CaptureConfig, all but model/prompts/"
                                    "out/reply)", cli=False,
                                    default_factory=lambda: CaptureConfig(**CAPTURE_DEFAULTS))
    analyze: AnalyzeConfig = option("[analyze]: AnalyzeConfig options", cli=False,
                                    default_factory=lambda: AnalyzeConfig(**ANALYZE_DEFAULTS))
    compare: CompareConfig = option("[compare]: CompareConfig options (jump_factor: the destabilization rule)",
                                    cli=False, default_factory=lambda: CompareConfig(**COMPARE_DEFAULTS))

    def __post_init__(self) -> None:
        if self.every < 0:
            raise InputError(f"every={self.every}; must be ≥ 0 (0: at each save)")
        if not self.poll > 0:
            raise InputError(f"poll={self.poll}; must be > 0 seconds")
        if self.capture.reply == "both":
            raise InputError("[capture] reply = 'both': the monitor audits one stream; set 'chosen' or 'rejected'")
        if self.capture.resume or self.capture.overwrite:
            raise InputError("[capture] resume/overwrite: the monitor decides these itself")

    def capture_config(self, model: str, out: str, **kw) -> CaptureConfig:
        """The capture of one audited step (or of the reference) into ``out``."""
        return replace(self.capture, model=model, prompts=self.prompts, out=out, **kw)

    def analyze_config(self, store: str, out: str) -> AnalyzeConfig:
        return replace(self.analyze, store=store, out=out, overwrite=True)

    def record(self) -> dict:
        """What identifies the audit (monitor.json): every option but where it runs and how often it looks."""
        d = dataclasses.asdict(self)
        for k in ("out", "poll", "background", "stop_on_flag"):
            d.pop(k)
        for table, sets in self.SETS.items():
            for k in sets:
                d[table].pop(k, None)
        return d


def monitor_config(out: str, prompts: str, *, capture: dict | None = None, analyze: dict | None = None,
                   compare: dict | None = None, **options) -> MonitorConfig:
    """A MonitorConfig from keyword options, the stage tables given as dicts over the monitor's defaults
    (values checked as a TOML's are)."""
    tables = {"capture": (CaptureConfig, CAPTURE_DEFAULTS, capture), "analyze": (AnalyzeConfig, ANALYZE_DEFAULTS,
                                                                                  analyze),
              "compare": (CompareConfig, COMPARE_DEFAULTS, compare)}
    stages = {}
    for name, (cls, defaults, given) in tables.items():
        given = dict(given or {})
        sets = sorted(set(given) & MonitorConfig.SETS[name])
        if sets:
            raise InputError(f"[{name}] {sets}: the monitor sets them itself")
        stages[name] = from_dict(cls, {**defaults, **given}, where=f"monitor [{name}]")
    return replace(from_dict(MonitorConfig, {"out": out, "prompts": prompts, **options}, where="monitor options"),
                   **stages)


def load_monitor_config(path: str, *, sets: list[str] | tuple[str, ...] = (), **overrides) -> MonitorConfig:
    """Read a monitor TOML ([monitor] out, prompts, every, …; [capture], [analyze], [compare]); relative paths
    are resolved against the file's folder. ``overrides`` (None: not given) replace [monitor] keys, ``sets``
    (``TABLE.KEY=VALUE``) the stage tables'."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"monitor config {path} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{path}: not a TOML monitor config ({e})") from None
    unknown = sorted(set(doc) - {"monitor", "capture", "analyze", "compare"})
    if unknown:
        raise InputError(f"{path}: unknown table(s) {unknown}; known: monitor, capture, analyze, compare")
    apply_sets(doc, sets, {"capture": CaptureConfig, "analyze": AnalyzeConfig, "compare": CompareConfig})
    mon = dict(doc.get("monitor", {}))
    base = p.resolve().parent
    for key in ("out", "prompts", "reference", "base"):  # the file's paths are the file's; a Hub id stays one
        v = mon.get(key)
        if isinstance(v, str) and "://" not in v and (key == "out" or (base / v).exists()):
            mon[key] = str((base / v).resolve())
    mon |= {k: v for k, v in overrides.items() if v is not None}  # the command line's, relative to its folder
    for key in ("out", "prompts"):
        if not isinstance(mon.get(key), str):
            raise InputError(f"{path}: [monitor] needs a string '{key}' (or give --{key})")
    return monitor_config(capture=doc.get("capture"), analyze=doc.get("analyze"), compare=doc.get("compare"), **mon)


def from_record(options: dict, out: str) -> MonitorConfig:
    """The MonitorConfig a monitor.json's ``options`` (MonitorConfig.record) were made from, writing to ``out``."""
    tables = {k: options[k] for k in ("capture", "analyze", "compare")}
    rest = {k: v for k, v in options.items() if k not in tables}
    return monitor_config(out=out, **rest, **tables)
