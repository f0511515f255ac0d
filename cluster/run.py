"""`spinal run`: capture → analyze → compare → report for every checkpoint of a run config, resumable stage by stage."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from spinal.config import RunConfig
from spinal.errors import InputError
from spinal.lock import LOCK_NAME, StoreLock
from spinal.outputs import MARKER, check_output, move_aside, write_marker, write_text_atomic
from spinal.location import store_exists
from spinal.store import Store

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


def prepare_out(cfg: RunConfig, resume: bool, overwrite: bool, prompts_sha256: str | None = None
                ) -> tuple[Path, StoreLock]:
    """Take the run folder's writer lock, then create the folder, or check a resumed one was made by the
    same config and prompts. Returns the folder and the held lock (one `spinal run` per folder).

    ``--overwrite`` replaces only a SPINAL run folder that holds nothing else (moved aside whole, then
    deleted); anything else at the path is refused with nothing touched.
    """
    out = Path(cfg.out)
    record = {**_config_record(cfg), "prompts_sha256": prompts_sha256}
    rec_file = out / "run.json"
    check_output(out, "run", overwrite, flag="--resume to finish it or --overwrite to start again", resume=resume)
    lock = StoreLock(str(out)).acquire()
    try:
        if overwrite and any(n.name != LOCK_NAME for n in out.iterdir()):
            move_aside(out)  # the old run goes whole, with the lock we held in it
            lock.release()
            lock = StoreLock(str(out)).acquire()
        elif rec_file.exists():
            try:
                old = json.loads(rec_file.read_text())
            except ValueError:
                raise InputError(f"{rec_file} cannot be read; start again with --overwrite") from None
            diff = _changes(old, record)
            if diff:
                raise InputError(f"--resume refused: the config or the prompt file changed since {out} was started "
                                 f"({'; '.join(diff[:4])}); start again with --overwrite or use another [run] out")
        write_text_atomic(rec_file, json.dumps(record, indent=2))
        if not (out / MARKER).exists():
            write_marker(out, "run", digests=False)
    except BaseException:
        lock.release()
        raise
    return out, lock


def check_inputs(cfg: RunConfig) -> str:
    """Everything that can be checked before any model is loaded; returns the prompt set's hash."""
    from spinal.capture.load import check_checkpoint
    from spinal.capture.prompts import load_prompts

    prompts = load_prompts(cfg.prompts)
    for ck in cfg.checkpoints:
        c = cfg.capture_config(ck, out="-")
        check_checkpoint(ck.path, allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
    cfg.analyze_config("-", "-")
    cfg.cluster_config()
    return prompts.sha256


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: Progress | None = None,
        address: str | None = None, service: bool = False) -> RunSummary:
    """Run every stage, in-process for one replica without an address, else on Ray (local or ``address``)."""
    prompts_sha256 = check_inputs(cfg)
    cluster = cfg.cluster_config(**({"address": address} if address else {}))
    if cluster.uses_ray or service:
        from spinal.cluster.ray_capture import connect

        connect(cluster.address or ("auto" if service else None))  # before the output folder is touched
    out, lock = prepare_out(cfg, resume, overwrite, prompts_sha256)
    try:
        return _stages(cfg, out, progress, cluster, service)
    finally:
        lock.release()


def _stages(cfg: RunConfig, out: Path, progress: Progress | None, cluster, service: bool) -> RunSummary:
    from spinal.analyze.compare import compare
    from spinal.analyze.trace import analyze
    from spinal.analyze.weights import block_sq_change
    from spinal.capture import capture

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
        reused = _reusable_trace(tdir)
        if reused is not None:
            traces.append(reused)
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

    summary.report = str(write_report(traces, comparison, out / "report", overwrite=True))
    summary.add("report", "all", time.perf_counter() - t0, False)
    write_text_atomic(out / "summary.json", json.dumps(asdict(summary), indent=2))
    return summary


def _reusable_trace(tdir: Path):
    """A trace folder of this run that is whole (every digest matches), or None to redo it."""
    from spinal.analyze.trace import Trace

    if not (tdir / "trace.json").exists():
        return None
    try:
        return Trace.load(tdir)
    except InputError as e:
        log.warning("redoing the trace in %s: %s", tdir, e)
        return None
