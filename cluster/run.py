"""`spinal run`: capture → analyze → compare → report for every checkpoint of a run config, resumable stage by stage."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from spinal.config import RunConfig
from spinal.errors import InputError
from spinal.store import Store, store_exists

log = logging.getLogger(__name__)

# Events for the CLI: (stage, label, done, total); stage in capture/analyze/compare/report.
Progress = Callable[[str, str, int, int], None]


@dataclass
class RunSummary:
    out: str
    stages: list[dict] = field(default_factory=list)  # stage, label, seconds, skipped, detail
    report: str | None = None
    comparison: str | None = None

    def add(self, stage: str, label: str, seconds: float, skipped: bool, detail: str = "") -> None:
        self.stages.append({"stage": stage, "label": label, "seconds": round(seconds, 2), "skipped": skipped,
                            "detail": detail})


def _config_record(cfg: RunConfig) -> dict:
    d = asdict(cfg)
    d.pop("source", None)
    return json.loads(json.dumps(d, default=str))


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def prepare_out(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Create the output folder, or check a resumed one was made by the same config."""
    out = Path(cfg.out)
    record = _config_record(cfg)
    rec_file = out / "run.json"
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise InputError(f"run folder {out} exists; pass --resume to finish it or --overwrite to start again")
        elif rec_file.exists():
            old = json.loads(rec_file.read_text())
            diff = _changes(old, record)
            if diff:
                raise InputError(f"--resume refused: the config changed since {out} was started ({'; '.join(diff[:4])})")
    out.mkdir(parents=True, exist_ok=True)
    rec_file.write_text(json.dumps(record, indent=2))
    return out


def check_inputs(cfg: RunConfig) -> None:
    """Everything that can be checked before any model is loaded."""
    from spinal.capture.load import check_checkpoint
    from spinal.capture.prompts import load_prompts

    load_prompts(cfg.prompts)
    for ck in cfg.checkpoints:
        c = cfg.capture_config(ck, out="-")
        check_checkpoint(ck.path, allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
    cfg.analyze_config("-", "-")
    cfg.cluster_config()


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: Progress | None = None,
        address: str | None = None, service: bool = False) -> RunSummary:
    """Run every stage, in-process for one replica without an address, else on Ray (local or ``address``)."""
    from spinal.analyze.compare import compare
    from spinal.analyze.trace import Trace, analyze
    from spinal.analyze.weights import block_sq_change
    from spinal.capture import capture

    check_inputs(cfg)
    cluster = cfg.cluster_config(**({"address": address} if address else {}))
    if cluster.uses_ray or service:
        from spinal.cluster.ray_capture import connect

        connect(cluster.address or ("auto" if service else None))  # before the output folder is touched
    out = prepare_out(cfg, resume, overwrite)
    summary = RunSummary(str(out))
    capture_fn, analyze_submit = capture, None
    labels = {ck.path: ck.label for ck in cfg.checkpoints}
    if service:
        from spinal.cluster.ray_capture import ray_submit
        from spinal.cluster.service import capture_with_service

        capture_fn = lambda c, p: capture_with_service(c, labels[c.model], cluster.address,  # noqa: E731
                                                       cluster.max_unit_retries, p)
        analyze_submit = ray_submit
    elif cluster.uses_ray:
        from spinal.cluster.ray_capture import capture_on_ray, connect, ray_submit

        connect(cluster.address)
        capture_fn = lambda c, p: capture_on_ray(c, cluster, p)  # noqa: E731
        analyze_submit = ray_submit
    traces = []
    for ck in cfg.checkpoints:
        store = str(out / "stores" / f"{ck.label}.zarr")
        t0 = time.perf_counter()
        done = store_exists(store) and Store.open(store).complete
        if not done:
            ccfg = cfg.capture_config(ck, store, resume=store_exists(store))
            cb = (lambda d, t, _l=ck.label: progress("capture", _l, d, t)) if progress else None
            res = capture_fn(ccfg, cb)
            summary.add("capture", ck.label, time.perf_counter() - t0, False,
                        f"{res.tokens:,} tokens, {res.units_written} units written, {res.units_skipped} reused")
        else:
            summary.add("capture", ck.label, 0.0, True, "store complete")
        tdir = out / "traces" / ck.label
        t0 = time.perf_counter()
        if (tdir / "trace.json").exists():
            traces.append(Trace.load(tdir))
            summary.add("analyze", ck.label, 0.0, True, "trace exists")
        else:
            acfg = cfg.analyze_config(store, str(tdir), overwrite=True)
            cb = (lambda d, t, _l=ck.label: progress("analyze", _l, d, t)) if progress else None
            tr = analyze(acfg, progress=cb, label=ck.label, submit=analyze_submit)
            tr.save(tdir, overwrite=True)
            traces.append(tr)
            summary.add("analyze", ck.label, time.perf_counter() - t0, False,
                        f"path length {tr.meta['path_length']:.4g}")
    comparison = None
    if len(traces) >= 2:
        t0 = time.perf_counter()
        grad = None
        if cfg.compare.get("weights", True):
            n_blocks = int(max(traces[0].table["layer"]))
            try:
                grad = [None] + [block_sq_change(cfg.checkpoints[0].path, ck.path, n_blocks)
                                 for ck in cfg.checkpoints[1:]]
            except InputError as e:
                log.warning("gradient concentration skipped: %s", e)
        comparison = compare(traces, seed=cfg.compare.get("seed", 0), n_boot=cfg.compare.get("n_boot", 1000),
                             null_splits=cfg.compare.get("null_splits", 32), grad=grad)
        n_cross = cfg.compare.get("cross_readout_tokens", 20000)
        if n_cross:
            from spinal.analyze.compare import with_cross_readout
            from spinal.analyze.cross_readout import cross_readout

            ref_store = str(out / "stores" / f"{cfg.checkpoints[0].label}.zarr")
            frames = {ck.label: cross_readout(ref_store, str(out / "stores" / f"{ck.label}.zarr"),
                                              lens_tokens=n_cross, seed=cfg.compare.get("seed", 0))
                      for ck in cfg.checkpoints[1:]}
            comparison = with_cross_readout(comparison, frames)
        comparison.save(out / "compare", overwrite=True)
        summary.comparison = str(out / "compare")
        summary.add("compare", ",".join(t.label for t in traces), time.perf_counter() - t0, False)
    t0 = time.perf_counter()
    from spinal.analyze.report import write_report

    summary.report = str(write_report(traces, comparison, out / "report"))
    summary.add("report", "all", time.perf_counter() - t0, False)
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
